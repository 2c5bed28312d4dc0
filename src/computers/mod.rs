//! Lifecycle of computers and supervision of their VMM processes.
