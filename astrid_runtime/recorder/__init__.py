"""Time travel: the recorded bus and host calls (`recorder`), kept in SurrealDB
(`store`, a chunk at a time: `chunk`), read by `astrid log` / `astrid show`
(`query`) and replayed against one plugin (`replay`). `values` keeps ABI values in
JSON; `settings` is `[recording]`.
"""
