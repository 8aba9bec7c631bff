# Distro packages, built in a copy of the tree under $(OUT); the checkout stays clean.
#   make deb    $(OUT)/sdshim_VERSION_all.deb and sdshim-conmon_VERSION_all.deb, checked
#               with lintian (no errors allowed)
#   make rpm    $(OUT)/sdshim-VERSION-1.noarch.rpm and sdshim-conmon-VERSION-1.noarch.rpm
# On Debian 12 the tools come from the packages in dev.sh's APT_PACKAGES
# (`./dev.sh setup` installs them).

OUT ?= out
override OUT := $(abspath $(OUT))
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
SOURCES := pyproject.toml README.md sdshim systemd packaging bin
# Distro packages build with the distro's python3 and tools, not with whatever
# python3 comes first in PATH (pyenv, a virtualenv).
BUILD_ENV := env PATH=/usr/sbin:/usr/bin:/sbin:/bin
# Debian's rpm database does not know Debian's packages: skip BuildRequires there.
RPMBUILD_FLAGS ?= $(if $(wildcard /etc/debian_version),--nodeps)

.PHONY: deb rpm packages check-version bench

packages: deb rpm

# sdshim against conmon, podman and runc, in a throwaway systemd (root; bench/run.py).
bench:
	python3 -m bench.run $(BENCH_FLAGS)

# The version lives in pyproject.toml; the package files must say the same.
check-version:
	@deb=$$(sed -n '1s/^sdshim (\([^)]*\)).*/\1/p' packaging/debian/changelog) && \
	rpm=$$(sed -n 's/^Version: *//p' packaging/rpm/sdshim.spec) && \
	init=$$(sed -n 's/^__version__ = "\(.*\)"/\1/p' sdshim/__init__.py) && \
	for v in "$$deb:packaging/debian/changelog" "$$rpm:packaging/rpm/sdshim.spec" \
	         "$$init:sdshim/__init__.py"; do \
	    [ "$${v%%:*}" = "$(VERSION)" ] || { echo "make: $${v#*:} says version" \
	        "$${v%%:*}, pyproject.toml says $(VERSION); make them agree" >&2; exit 1; }; \
	done

deb: check-version
	rm -rf $(OUT)/deb
	mkdir -p $(OUT)/deb/sdshim-$(VERSION)
	cp -r $(SOURCES) $(OUT)/deb/sdshim-$(VERSION)/
	cp -r packaging/debian $(OUT)/deb/sdshim-$(VERSION)/debian
	find $(OUT)/deb -name __pycache__ -prune -exec rm -rf {} +
	cd $(OUT)/deb/sdshim-$(VERSION) && $(BUILD_ENV) dpkg-buildpackage --build=binary --no-sign
	$(BUILD_ENV) lintian --fail-on error --display-info $(OUT)/deb/sdshim_$(VERSION)_all.deb \
	    $(OUT)/deb/sdshim-conmon_$(VERSION)_all.deb
	cp $(OUT)/deb/sdshim_$(VERSION)_all.deb $(OUT)/deb/sdshim-conmon_$(VERSION)_all.deb $(OUT)/

rpm: check-version
	rm -rf $(OUT)/rpm
	mkdir -p $(OUT)/rpm/SOURCES
	tar -czf $(OUT)/rpm/SOURCES/sdshim-$(VERSION).tar.gz --exclude=__pycache__ \
	    --transform 's,^,sdshim-$(VERSION)/,' $(SOURCES)
	$(BUILD_ENV) rpmbuild -bb $(RPMBUILD_FLAGS) --define '_topdir $(OUT)/rpm' packaging/rpm/sdshim.spec
	cp $(OUT)/rpm/RPMS/noarch/sdshim-$(VERSION)-*.noarch.rpm \
	    $(OUT)/rpm/RPMS/noarch/sdshim-conmon-$(VERSION)-*.noarch.rpm $(OUT)/
