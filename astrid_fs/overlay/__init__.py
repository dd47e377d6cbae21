"""The overlay: layer rules, the upper layer's on-disk format, copy-up, the
inode table and the owner of every open file. No FUSE, no trio."""
