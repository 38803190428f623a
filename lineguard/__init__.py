"""The `lineguard` command: a thin router to each package's own command line.

Subcommands are imported lazily so that, for example, `lineguard appliance ...` never
imports `cloud` (and with it torch), and `import lineguard` imports nothing heavy.
"""
