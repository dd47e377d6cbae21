"""Lower-layer drivers: the trees a session's mount table draws from.

`base` defines the interface (`LowerDriver`, `Reader`, `EntryStat`,
`DriverSpec`); `local` and `s3` ship; `cache` and `readonly` are wrappers;
`registry` finds drivers through the `astrid_fs.drivers` entry-point group.
See docs/drivers.md.
"""
