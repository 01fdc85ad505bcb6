//! Library side of the `vipgate` binary: the isolated network lab shared by `vipgate demo` and the
//! integration tests, and the command-line front end.

pub mod lab;
