//! `vipgate node`: the node daemon.
pub fn run_daemon(
    args: &crate::ctl_cmd::NodeDaemonArgs,
    globals: &crate::Globals,
) -> anyhow::Result<std::process::ExitCode> {
    let _ = (args, globals);
    anyhow::bail!("the node daemon is not built yet")
}
