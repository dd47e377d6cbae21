"""The host side of the `astrid:kernel` WIT world, one module per interface.

`canon` converts between Python values and wasmtime's C component values
(with a bulk path for `list<u8>`); `hostfunc` registers host functions on a
component linker with a raw callback that never raises into the guest;
`log`, `bus`, `kv`, `vfs`, `cap` implement the interfaces.
"""
