//! Flags as files in a directory (being written; see the helper's brief).
