//! The `vipgate` command.

fn main() {}
