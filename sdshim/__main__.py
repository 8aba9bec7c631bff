from sdshim.units.cli import entry

entry()
