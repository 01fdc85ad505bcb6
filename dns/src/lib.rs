//! The embedded authoritative DNS server of a vipgate node: round-robin, low-TTL A/AAAA answers
//! listing only the public addresses that are live now (see `ARCHITECTURE.md`).
//!
//! Nothing is served from here yet; the DNS server is issue #5. The crate exists so that the
//! workspace layout matches the design from the first commit and later work has its home.
