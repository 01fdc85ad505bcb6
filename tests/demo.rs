//! `vipgate demo` as a person and a script use it: detach, list, exec, down, Ctrl-C, and the
//! plain refusal without root. Runs the real binary. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use vipgate::lab::{netns, state};

fn vipgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn detach_list_exec_down() {
    if !common::root_or_skip("detach_list_exec_down") {
        return;
    }
    let name = common::unique_name("dd");
    let started = vipgate(&[
        "demo",
        "--detach",
        "--name",
        &name,
        "--nodes",
        "2",
        "--clients",
        "1",
    ]);
    assert!(started.status.success(), "{}", stderr(&started));
    assert_eq!(
        stdout(&started).lines().last(),
        Some(name.as_str()),
        "the last line names the lab"
    );
    assert!(
        stdout(&started).contains("192.0.2.12"),
        "the hosts are printed:\n{}",
        stdout(&started)
    );

    // The lab outlives the command that made it, and `list --json` describes it.
    let listed = vipgate(&["demo", "list", "--json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let labs: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let lab = labs
        .as_array()
        .unwrap()
        .iter()
        .find(|lab| lab["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{name} missing from {labs}"));
    assert_eq!(lab["state"], "ready");
    assert!(lab["owner_pid"].is_null(), "a detached lab has no owner");
    let hosts: Vec<&str> = lab["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["node1", "node2", "client1"]);
    assert_eq!(lab["hosts"][1]["cluster_v4"], "198.51.100.12");
    assert_eq!(lab["hosts"][2]["namespace"], format!("{name}-client1"));
    let text = vipgate(&["demo", "list"]);
    assert!(
        stdout(&text).contains(&format!("lab {name} (ready, detached)")),
        "{}",
        stdout(&text)
    );

    // exec runs inside the host: its interfaces, its /etc/hosts, its exit code.
    let addresses = vipgate(&[
        "demo", "exec", "--lab", &name, "node1", "--", "ip", "-br", "addr", "show", "pub0",
    ]);
    assert!(addresses.status.success(), "{}", stderr(&addresses));
    assert!(
        stdout(&addresses).contains("192.0.2.11/24"),
        "{}",
        stdout(&addresses)
    );
    assert!(!stdout(&addresses).contains("192.0.2.12/24"));
    let resolved = vipgate(&[
        "demo",
        "exec",
        "--lab",
        &name,
        "client1",
        "--",
        "getent",
        "hosts",
        "node2-cluster",
    ]);
    assert!(
        stdout(&resolved).starts_with("198.51.100.12"),
        "{}{}",
        stdout(&resolved),
        stderr(&resolved)
    );
    let environment = vipgate(&[
        "demo",
        "exec",
        "--lab",
        &name,
        "node2",
        "--",
        "sh",
        "-c",
        "echo $VIPGATE_LAB_HOST; exit 7",
    ]);
    assert_eq!(environment.status.code(), Some(7));
    assert_eq!(stdout(&environment).trim(), "node2");
    let unknown = vipgate(&["demo", "exec", "--lab", &name, "node9", "--", "true"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("has no host node9"),
        "{}",
        stderr(&unknown)
    );

    let removed = vipgate(&["demo", "down", &name]);
    assert!(removed.status.success(), "{}", stderr(&removed));
    assert!(stdout(&removed).contains(&format!("lab {name} removed")));
    assert!(!netns::exists(&format!("{name}-node1")));
    assert!(state::load(&name).is_err());
    let again = vipgate(&["demo", "down", &name]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains(&format!("no lab named {name}")),
        "{}",
        stderr(&again)
    );
}

#[test]
fn ctrl_c_removes_a_foreground_lab() {
    if !common::root_or_skip("ctrl_c_removes_a_foreground_lab") {
        return;
    }
    let name = common::unique_name("df");
    let demo = Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(["demo", "--name", &name, "--nodes", "1", "--clients", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(30), || state::load(&name)
            .is_ok_and(|r| r.ready)),
        "the demo lab did not come up"
    );
    assert!(netns::exists(&format!("{name}-client1")));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(demo.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let output = demo.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("Try:"), "the demo says what to try:\n{text}");
    assert!(text.contains(&format!("lab {name} removed")), "{text}");
    assert!(!netns::exists(&format!("{name}-node1")));
    assert!(!netns::exists(&format!("{name}-sw")));
    assert!(state::load(&name).is_err());
}

#[test]
fn without_root_the_demo_says_so() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vipgate"));
    command.args(["demo", "--name", "never"]);
    if vipgate::lab::is_root() {
        // SAFETY: setuid is async-signal-safe; the child drops to nobody before exec.
        unsafe {
            command.pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let output = command.output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("needs root"),
        "{}",
        stderr(&output)
    );
    assert!(!netns::exists("never-sw"));
}
