//! The Linux kernel's own NFSv3 client against vipgate: Debian's kernel boots under QEMU as a host
//! of a three-node lab (`tests/common/qemu.rs`), mounts `VIP:/demo` the plain way
//! (`vers=3,proto=tcp,hard`, no port options: portmap on 111 and MOUNT are asked), does real file
//! work and reports on its serial console; the test checks what it printed and what landed on the
//! shared volume. A second case checks POSIX details through the kernel (silly rename of an open
//! file, rename over a file, O_EXCL, times, a fifo, a sparse file past 4 GiB, a listing that needs
//! cookies) and acts as a second user (uid 1000) beside the squashed root, then mounts the export
//! again through the IPv6 VIP. Two more cases SIGKILL the VIP owner's `vipgate node`: one while
//! the guest streams a long write (every byte arrives), one after the guest sent UNSTABLE WRITEs
//! that nothing committed (the new owner's write verifier makes the kernel send them again). The
//! long write also rides a hung owner (SIGSTOP: the new owner's tickle makes the client reconnect)
//! and a planned `vipgate moveip`. Another runs nfs-utils' own `mount.nfs` (with its libraries)
//! with no version: it tries NFSv4.2, 4.1 and 4.0, is refused, and falls back to NFSv3. The pure
//! parts of the QEMU helper are table-tested here too. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]
#![allow(
    clippy::zombie_processes,
    reason = "node daemons are stopped by the lab's teardown; a killed one is reaped when the test ends"
)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{first_v4, holders, logs, owner_of, signal, start_cluster};
use common::qemu::{
    self, Accel, CpioEntry, Guest, GuestReport, cache_key, choose_accel, cpio_newc,
    cpu_has_virtualisation, elf_is_static, host_files, init_script, kernel_package, ldd_paths,
    load_order, modinfo_depends, module_name, package_version, parent_directories, parse_console,
};
use nix::sys::signal::Signal;
use vipgate::lab::{Lab, cluster};

/// The guest's address on the lab's public network (nodes are .11…, clients .101…, VIPs .201…).
const GUEST_ADDRESS: &str = "192.0.2.150/24";
/// The guest's IPv6 address on the same network, for the IPv6 mount.
const GUEST_V6: &str = "2001:db8:0:1::150/64";
/// nfs-utils' mount helper, run in the guest with its shared libraries (Debian's nfs-common).
const MOUNT_NFS: &str = "/sbin/mount.nfs";
/// Boot, mount and the script's work under TCG on a slow, shared machine.
const GUEST_DEADLINE: Duration = Duration::from_secs(240);
/// The mount options: what `mount -t nfs -o vers=3` gives over TCP, hard. `nolock` because the
/// guest runs no rpcbind of its own for its lockd to register with (see ARCHITECTURE.md).
const MOUNT_OPTIONS: &str = "vers=3,proto=tcp,hard,nolock";

// ---------------------------------------------------------------------------------------------
// The pure parts of the helper.

#[test]
fn the_kernel_package_and_its_version_come_from_apt_output() {
    let depends = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
    assert_eq!(
        kernel_package(depends).as_deref(),
        Some("linux-image-6.1.0-56-amd64")
    );
    let alternatives = "linux-image-amd64\n |Depends: linux-image-6.1.0-9-amd64\n  Depends: x\n";
    assert_eq!(
        kernel_package(alternatives).as_deref(),
        Some("linux-image-6.1.0-9-amd64")
    );
    assert_eq!(
        kernel_package("linux-image-amd64\n  Depends: <linux-image-virtual>\n"),
        None
    );
    assert_eq!(kernel_package(""), None);
    let show = "Package: linux-image-6.1.0-56-amd64\nSource: linux-signed-amd64 (6.1.192+2)\n\
                Version: 6.1.192-2\nInstalled-Size: 1\n";
    assert_eq!(package_version(show).as_deref(), Some("6.1.192-2"));
    assert_eq!(package_version("Package: x\n"), None);
    assert_eq!(package_version("Version: \n"), None);
    assert_eq!(
        cache_key("linux-image-6.1.0-56-amd64", "6.1.192-2"),
        "linux-image-6.1.0-56-amd64_6.1.192-2-v2"
    );
    assert_eq!(cache_key("k", "1:2/../3"), "k_1_2_.._3-v2");
}

/// A minimal ELF64 relocatable object with the given named sections, as a module file is laid
/// out: section contents, the section name table, then the section headers.
fn elf_with_sections(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut names = vec![0u8];
    let mut name_offsets = Vec::new();
    for (name, _) in sections {
        name_offsets.push(u32::try_from(names.len()).unwrap());
        names.extend_from_slice(name.as_bytes());
        names.push(0);
    }
    let shstrtab_name = u32::try_from(names.len()).unwrap();
    names.extend_from_slice(b".shstrtab\0");
    let mut out = vec![0u8; 64];
    out[..6].copy_from_slice(b"\x7fELF\x02\x01");
    let mut placed = Vec::new();
    for (_, contents) in sections {
        placed.push((out.len() as u64, contents.len() as u64));
        out.extend_from_slice(contents);
    }
    let names_at = out.len() as u64;
    out.extend_from_slice(&names);
    let table = out.len() as u64;
    let header = |out: &mut Vec<u8>, name: u32, offset: u64, size: u64| {
        let mut entry = [0u8; 64];
        entry[..4].copy_from_slice(&name.to_le_bytes());
        entry[24..32].copy_from_slice(&offset.to_le_bytes());
        entry[32..40].copy_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&entry);
    };
    header(&mut out, 0, 0, 0);
    for (index, (offset, size)) in placed.iter().enumerate() {
        header(&mut out, name_offsets[index], *offset, *size);
    }
    header(&mut out, shstrtab_name, names_at, names.len() as u64);
    let count = u16::try_from(sections.len() + 2).unwrap();
    out[0x28..0x30].copy_from_slice(&table.to_le_bytes());
    out[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    out[0x3c..0x3e].copy_from_slice(&count.to_le_bytes());
    out[0x3e..0x40].copy_from_slice(&(count - 1).to_le_bytes());
    out
}

#[test]
fn module_dependencies_are_read_from_the_modinfo_section() {
    /// Named sections of a module file, and what `modinfo_depends` makes of it.
    type Case<'a> = (
        &'a [(&'a str, &'a [u8])],
        Result<Vec<&'a str>, qemu::ModinfoError>,
    );
    let cases: &[Case<'_>] = &[
        (
            &[
                (".text", b"depends=decoy\0"),
                (
                    ".modinfo",
                    b"license=GPL\0depends=sunrpc,fscache,lockd\0name=nfs\0",
                ),
            ],
            Ok(vec!["sunrpc", "fscache", "lockd"]),
        ),
        (&[(".modinfo", b"depends=\0name=sunrpc\0")], Ok(vec![])),
        (&[(".modinfo", b"depends=nfs-acl\0")], Ok(vec!["nfs_acl"])),
        (&[(".modinfo", b"name=x\0")], Ok(vec![])),
        (
            &[(".text", b"depends=decoy\0")],
            Err(qemu::ModinfoError::NoModinfo),
        ),
    ];
    for (sections, expected) in cases {
        let elf = elf_with_sections(sections);
        let expected = expected
            .clone()
            .map(|names| names.iter().map(|name| (*name).to_owned()).collect());
        assert_eq!(modinfo_depends(&elf), expected, "{sections:?}");
    }
    assert_eq!(
        modinfo_depends(b"#!/bin/sh\n"),
        Err(qemu::ModinfoError::NotElf64)
    );
    // Truncated anywhere, a module file gives an error, never a panic.
    let elf = elf_with_sections(&[(".modinfo", b"depends=a,b\0")]);
    for length in 0..elf.len() {
        let _ = modinfo_depends(&elf[..length]);
    }
    assert_eq!(module_name("virtio-net.ko").as_deref(), Some("virtio_net"));
    assert_eq!(module_name("nfs.ko.xz"), None);
    assert_eq!(module_name(".ko"), None);
}

#[test]
fn modules_load_after_their_dependencies() {
    let table: BTreeMap<&str, Vec<&str>> = [
        ("nfsv3", vec!["nfs", "lockd", "sunrpc", "nfs_acl"]),
        ("nfs", vec!["sunrpc", "fscache", "lockd"]),
        ("fscache", vec!["netfs"]),
        ("netfs", vec![]),
        ("lockd", vec!["sunrpc", "grace"]),
        ("grace", vec![]),
        ("nfs_acl", vec!["sunrpc"]),
        ("sunrpc", vec![]),
        ("virtio_net", vec!["virtio_ring", "virtio", "net_failover"]),
        ("virtio", vec!["virtio_ring"]),
        ("virtio_ring", vec![]),
        ("net_failover", vec!["failover"]),
        ("failover", vec![]),
        ("loop_a", vec!["loop_b"]),
        ("loop_b", vec!["loop_a"]),
        ("broken", vec!["absent"]),
    ]
    .into_iter()
    .collect();
    let mut depends = |name: &str| {
        table.get(name).map(|list| {
            list.iter()
                .map(|dependency| (*dependency).to_owned())
                .collect()
        })
    };
    let order = load_order(&["virtio_pci", "virtio_net", "nfsv3"], &mut depends).unwrap();
    assert_eq!(
        order,
        [
            "virtio_ring",
            "virtio",
            "failover",
            "net_failover",
            "virtio_net",
            "sunrpc",
            "netfs",
            "fscache",
            "grace",
            "lockd",
            "nfs",
            "nfs_acl",
            "nfsv3"
        ],
        "virtio_pci is not in the table, so it is built in"
    );
    let position = |name: &str| order.iter().position(|module| module == name).unwrap();
    for (module, dependencies) in &table {
        if order.iter().any(|loaded| loaded == module) {
            for dependency in dependencies {
                assert!(
                    position(dependency) < position(module),
                    "{dependency} before {module}"
                );
            }
        }
    }
    let cycle = load_order(&["loop_a"], &mut depends).unwrap_err();
    assert!(cycle.contains("cycle"), "{cycle}");
    let missing = load_order(&["broken"], &mut depends).unwrap_err();
    assert!(missing.contains("broken needs absent"), "{missing}");
}

#[test]
fn the_initramfs_is_a_newc_archive() {
    let archive = cpio_newc(&[
        CpioEntry::Directory { path: "bin".into() },
        CpioEntry::File {
            path: "init".into(),
            mode: 0o755,
            data: b"#!/bin/sh\n".to_vec(),
        },
        CpioEntry::CharDevice {
            path: "dev/console".into(),
            major: 5,
            minor: 1,
        },
    ]);
    // Every header is 110 ASCII bytes; names and data are padded to 4 bytes.
    let header = |at: usize| {
        std::str::from_utf8(&archive[at..at + 110])
            .unwrap()
            .to_owned()
    };
    let field = |header: &str, index: usize| {
        u32::from_str_radix(&header[6 + index * 8..14 + index * 8], 16).unwrap()
    };
    let first = header(0);
    assert!(first.starts_with("070701"));
    assert_eq!(field(&first, 1), 0o040755, "mode");
    assert_eq!(field(&first, 4), 2, "a directory has two links");
    assert_eq!(field(&first, 11), 4, "name size with its NUL");
    assert_eq!(&archive[110..114], b"bin\0");
    let second_at = 116; // 110 + 4 = 114, padded to 116; a directory has no data
    let second = header(second_at);
    assert_eq!(field(&second, 1), 0o100755);
    assert_eq!(field(&second, 6), 10, "file size");
    let name_end = second_at + 110 + 5;
    assert_eq!(&archive[second_at + 110..name_end], b"init\0");
    let data_at = name_end.next_multiple_of(4);
    assert_eq!(&archive[data_at..data_at + 10], b"#!/bin/sh\n");
    let third_at = (data_at + 10).next_multiple_of(4);
    let third = header(third_at);
    assert_eq!(field(&third, 1), 0o020600);
    assert_eq!((field(&third, 9), field(&third, 10)), (5, 1), "rdev");
    assert!(archive.windows(11).any(|window| window == b"TRAILER!!!\0"));
    assert_eq!(archive.len() % 4, 0);
}

#[test]
fn the_init_script_loads_modules_in_order_then_runs_the_script() {
    let script = init_script(&["sunrpc".into(), "nfs".into()], "192.0.2.150/24");
    let position = |needle: &str| {
        script
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} missing from:\n{script}"))
    };
    assert!(script.starts_with("#!/bin/busybox sh\n"));
    assert!(position("insmod /modules/sunrpc.ko") < position("insmod /modules/nfs.ko"));
    assert!(position("insmod /modules/nfs.ko") < position("ip addr add 192.0.2.150/24 dev eth0"));
    assert!(position("dev eth0") < position(". /script"));
    assert!(position(". /script") < position("VIPGATE-RESULT"));
    assert!(script.trim_end().ends_with("poweroff -f"));
}

#[test]
fn ldd_output_gives_the_libraries_and_the_loader() {
    let output = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                  \tlibtirpc.so.3 => /lib/x86_64-linux-gnu/libtirpc.so.3 (0x00007f1b)\n\
                  \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f1a)\n\
                  \t/lib64/ld-linux-x86-64.so.2 (0x00007f1c)\n\
                  \tlibgone.so.1 => not found\n";
    assert_eq!(
        ldd_paths(output),
        [
            "/lib/x86_64-linux-gnu/libtirpc.so.3",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
        ]
    );
    assert_eq!(
        parent_directories(&[
            "/sbin/mount.nfs".into(),
            "/lib/x86_64-linux-gnu/libc.so.6".into(),
            "/lib/x86_64-linux-gnu/libtirpc.so.3".into(),
            "/etc/netconfig".into(),
        ]),
        ["sbin", "lib", "lib/x86_64-linux-gnu", "etc"]
    );
}

#[test]
fn kvm_is_used_only_when_it_works() {
    assert_eq!(choose_accel(None, true), Ok(Accel::Kvm));
    assert_eq!(choose_accel(None, false), Ok(Accel::Tcg));
    assert_eq!(choose_accel(Some("tcg"), true), Ok(Accel::Tcg));
    assert_eq!(choose_accel(Some("kvm"), false), Ok(Accel::Kvm));
    assert_eq!(choose_accel(Some(""), false), Ok(Accel::Tcg));
    assert!(choose_accel(Some("hvf"), true).is_err());
    assert!(cpu_has_virtualisation("flags\t\t: fpu vme vmx sse\n"));
    assert!(cpu_has_virtualisation("flags\t\t: fpu svm\n"));
    assert!(!cpu_has_virtualisation(
        "flags\t\t: fpu vme sse hypervisor\n"
    ));
    assert!(!cpu_has_virtualisation("model name: vmx\n"));
}

#[test]
fn a_static_busybox_is_told_from_a_dynamic_one() {
    let program = |interpreter: bool| {
        let mut elf = vec![0u8; 64 + 2 * 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        elf[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        let kind: u32 = if interpreter { 3 } else { 1 };
        elf[120..124].copy_from_slice(&kind.to_le_bytes());
        elf
    };
    assert!(elf_is_static(&program(false)));
    assert!(!elf_is_static(&program(true)));
    assert!(!elf_is_static(b"#!/bin/sh\n"));
    assert!(!elf_is_static(&program(false)[..100]), "truncated headers");
}

#[test]
fn the_console_report_reads_marker_lines() {
    let console = "SeaBIOS\nVIPGATE-BOOTED 1.2\nVIPGATE-STEP mount ok\n\
                   [ 3.1] nfs: server 192.0.2.201 OKVIPGATE-STEP write FAIL rc=1\n\
                   VIPGATE-VALUE sha256 abc def\nVIPGATE-VALUE empty\nVIPGATE-RESULT fail\n\
                   VIPGATE-END 9.9\n";
    let report = parse_console(console);
    assert_eq!(
        report.steps,
        vec![
            ("mount".to_owned(), None),
            ("write".to_owned(), Some("FAIL rc=1".to_owned()))
        ]
    );
    assert!(report.step_ok("mount"));
    assert!(!report.step_ok("write"));
    assert_eq!(report.failed_steps(), ["write: FAIL rc=1"]);
    assert_eq!(report.value("sha256"), Some("abc def"));
    assert_eq!(report.value("empty"), Some(""));
    assert_eq!(report.result, Some(false));
    assert!(report.ended);
    assert_eq!(
        parse_console("VIPGATE-STEP\n").steps,
        [(String::new(), Some(String::new()))]
    );
    assert_eq!(parse_console("no markers\n"), GuestReport::default());
}

// ---------------------------------------------------------------------------------------------
// The kernel client against a cluster.

/// The lab, cluster and kit for a kernel client test, or `None` if it must be skipped.
fn cluster_and_kit(test: &str) -> Option<(Lab, &'static qemu::Kit)> {
    if !common::root_or_skip(test) {
        return None;
    }
    let kit = qemu::kit_or_skip(test)?;
    let lab = start_cluster("kq");
    // The gateway answers on the VIP once the VIP is up and the NFS probe passed; the VIPs are
    // hosted, and the guest's boot takes longer than the services need.
    Some((lab, kit))
}

fn sha256_of(path: &Path) -> String {
    let output = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    assert!(output.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The node logs' warnings and errors, for the report of what the kernel client surfaced.
fn node_complaints(lab: &Lab) -> String {
    lab.plan()
        .hosts_of(vipgate::lab::Role::Node)
        .flat_map(|host| {
            let text = std::fs::read_to_string(cluster::log_path(lab.name(), &host.name))
                .unwrap_or_default();
            text.lines()
                .filter(|line| {
                    line.contains("WARN") || line.contains("ERROR") || line.contains("panicked")
                })
                .map(|line| format!("{}: {line}", host.name))
                .collect::<Vec<_>>()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn describe(report: &GuestReport, console: &str, lab: &Lab) -> String {
    let tail: Vec<&str> = console.lines().rev().take(60).collect();
    format!(
        "failed steps: {:?}\n--- console (tail) ---\n{}\n--- nodes ---\n{}",
        report.failed_steps(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        logs(lab)
    )
}

/// Boots the guest with `script` and waits for it to finish.
fn run_guest(lab: &Lab, kit: &qemu::Kit, script: &str) -> (GuestReport, String) {
    let mut guest = Guest::boot(lab, kit, GUEST_ADDRESS, script).unwrap();
    let console = guest
        .wait_end(GUEST_DEADLINE)
        .unwrap_or_else(|error| panic!("{error}\n{}\n{}", guest.console(), logs(lab)));
    (parse_console(&console), console)
}

/// The script preamble: mount the export through `vip` as a stock client would.
fn mount_script(vip: std::net::IpAddr) -> String {
    format!(
        "step mount mount -t nfs -o {MOUNT_OPTIONS} {vip}:/{export} /mnt\n\
         value mount \"$(grep ' /mnt nfs ' /proc/mounts)\"\n",
        export = cluster::DEMO_EXPORT
    )
}

#[test]
fn a_kernel_client_mounts_through_a_vip_and_does_file_work() {
    let test = "a_kernel_client_mounts_through_a_vip_and_does_file_work";
    let Some((lab, kit)) = cluster_and_kit(test) else {
        return;
    };
    let vip = first_v4();
    let script = mount_script(vip)
        + r#"
dd if=/dev/urandom of=/tmp/source bs=1M count=4 2>/dev/null
value source-sha256 $(sha256sum /tmp/source | cut -d' ' -f1)
step write cp /tmp/source /mnt/data.bin
step listed sh -c 'ls -l /mnt | grep -q " data.bin$"'
value owner $(stat -c %u:%g /mnt/data.bin)
step rename mv /mnt/data.bin /mnt/renamed.bin
step renamed-away sh -c '! test -e /mnt/data.bin'
step tree mkdir -p /mnt/tree/a/b/c
step tree-files sh -c 'for d in /mnt/tree /mnt/tree/a /mnt/tree/a/b /mnt/tree/a/b/c; do echo hello > $d/file.txt || exit 1; done'
step many-files sh -c 'i=0; while [ $i -lt 300 ]; do : > /mnt/tree/many-$i || exit 1; i=$((i+1)); done'
value many-listed $(ls /mnt/tree | grep -c '^many-')
step symlink ln -s renamed.bin /mnt/link
value readlink $(readlink /mnt/link)
step hardlink ln /mnt/renamed.bin /mnt/hard.bin
value nlink $(stat -c %h /mnt/renamed.bin)
step chmod chmod 0640 /mnt/renamed.bin
value mode $(stat -c %a /mnt/renamed.bin)
step append sh -c 'echo one > /mnt/small.txt && echo two >> /mnt/small.txt'
step truncate sh -c 'dd if=/dev/zero of=/mnt/cut.bin bs=1k count=64 2>/dev/null && truncate -s 1000 /mnt/cut.bin'
value cut-size $(stat -c %s /mnt/cut.bin)
step remove-file rm /mnt/hard.bin
step remove-tree rm -r /mnt/tree/a/b
step statfs df /mnt
step drop-caches sh -c 'sync && echo 3 > /proc/sys/vm/drop_caches'
value readback-sha256 $(sha256sum /mnt/renamed.bin | cut -d' ' -f1)
value small "$(cat /mnt/small.txt | tr '\n' ' ')"
ls -la /mnt
step umount umount /mnt
"#;
    let started = Instant::now();
    let (report, console) = run_guest(&lab, kit, &script);
    eprintln!(
        "kernel client ({}, {}): guest run took {:?} (in guest time: network up at {:?} s, \
         done at {:?} s); mount: {:?}",
        kit.key,
        kit.accel.name(),
        started.elapsed(),
        marker_time(&console, "READY"),
        marker_time(&console, "END"),
        report.value("mount")
    );
    eprintln!("node warnings and errors:\n{}", node_complaints(&lab));
    assert_eq!(
        report.result,
        Some(true),
        "{}",
        describe(&report, &console, &lab)
    );

    let source = report.value("source-sha256").unwrap();
    assert_eq!(source.len(), 64, "{report:?}");
    assert_eq!(report.value("readback-sha256"), Some(source));
    // The guest is root; the export squashes root to its anonymous owner.
    assert_eq!(report.value("owner"), Some("65534:65534"));
    assert_eq!(report.value("many-listed"), Some("300"));
    assert_eq!(report.value("readlink"), Some("renamed.bin"));
    assert_eq!(report.value("nlink"), Some("2"));
    assert_eq!(report.value("mode"), Some("640"));
    assert_eq!(report.value("cut-size"), Some("1000"));
    assert_eq!(report.value("small"), Some("one two"));

    // What landed on the shared volume, read directly.
    let export = cluster::volume_source(lab.name()).join(cluster::DEMO_EXPORT);
    assert_eq!(sha256_of(&export.join("renamed.bin")), source);
    assert!(!export.join("data.bin").exists());
    assert!(!export.join("hard.bin").exists());
    assert_eq!(
        std::fs::read_link(export.join("link")).unwrap(),
        Path::new("renamed.bin")
    );
    assert_eq!(
        std::fs::read_to_string(export.join("tree/a/file.txt")).unwrap(),
        "hello\n"
    );
    assert!(!export.join("tree/a/b").exists());
    assert_eq!(
        std::fs::read_to_string(export.join("small.txt")).unwrap(),
        "one\ntwo\n"
    );
    let many = std::fs::read_dir(export.join("tree"))
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .is_ok_and(|entry| entry.file_name().to_string_lossy().starts_with("many-"))
        })
        .count();
    assert_eq!(many, 300);
    assert!(
        !node_complaints(&lab).contains("panicked"),
        "a node panicked:\n{}",
        node_complaints(&lab)
    );
}

/// Where a sparse file's one written block lies: past 4 GiB, so offsets and sizes need 64 bits.
const SPARSE_OFFSET: u64 = 5_000_000_000;
/// Entries of the crowded directory: several READDIRPLUS replies, so cookies carry the listing.
const CROWD: usize = 1500;

#[test]
fn a_kernel_client_gets_posix_semantics_and_acts_as_its_users() {
    let test = "a_kernel_client_gets_posix_semantics_and_acts_as_its_users";
    let Some((lab, kit)) = cluster_and_kit(test) else {
        return;
    };
    let vip = first_v4();
    let vip6 = cluster::vip_addresses()
        .into_iter()
        .find(std::net::IpAddr::is_ipv6)
        .unwrap();
    // `value NAME refused|done` reports whether a command the server should refuse worked.
    let script = mount_script(vip)
        + &format!(
            r#"
outcome() {{ name=$1; shift; if "$@" >/dev/null 2>&1; then value $name done; else value $name refused; fi; }}
mkdir -p /etc
echo 'user:x:1000:1000::/tmp:/bin/sh' >> /etc/passwd
echo 'user:x:1000:' >> /etc/group
echo silly > /mnt/silly.txt
exec 3< /mnt/silly.txt
step silly-unlink rm /mnt/silly.txt
step silly-drop-caches sh -c 'echo 3 > /proc/sys/vm/drop_caches'
value silly-hidden $(ls -A /mnt | grep -c '^\.nfs')
value silly-read "$(cat <&3)"
exec 3<&-
i=0; while [ $i -lt 100 ] && ls -A /mnt | grep -q '^\.nfs'; do sleep 0.1; i=$((i+1)); done
value silly-after $(ls -A /mnt | grep -c '^\.nfs')
echo first > /mnt/ra
echo second > /mnt/rb
step rename-over mv -f /mnt/ra /mnt/rb
value rename-over "$(cat /mnt/rb)"
step excl-first sh -c 'set -C; echo one > /mnt/excl'
outcome excl-second sh -c 'set -C; echo two > /mnt/excl'
step touch-date sh -c "TZ=UTC touch -d '2001-02-03 04:05:06' /mnt/dated"
value dated-mtime $(stat -c %Y /mnt/dated)
step mkfifo mkfifo /mnt/fifo
value fifo-type "$(stat -c %F /mnt/fifo)"
step sparse-size truncate -s 5G /mnt/sparse.bin
step sparse-tail sh -c 'printf tail | dd of=/mnt/sparse.bin bs=1 seek={SPARSE_OFFSET} conv=notrunc 2>/dev/null'
step crowd sh -c 'mkdir /mnt/crowd && i=0; while [ $i -lt {CROWD} ]; do : > /mnt/crowd/entry-$i || exit 1; i=$((i+1)); done'
echo secret > /mnt/private.txt
chmod 0600 /mnt/private.txt
outcome chown chown 1000 /mnt/private.txt
step open-dir sh -c 'mkdir /mnt/open && chmod 1777 /mnt/open'
step drop-caches sh -c 'sync && echo 3 > /proc/sys/vm/drop_caches'
value crowd $(ls /mnt/crowd | wc -l)
value crowd-unique $(ls /mnt/crowd | sort -u | wc -l)
value sparse-size $(stat -c %s /mnt/sparse.bin)
value sparse-tail "$(dd if=/mnt/sparse.bin bs=1 skip={SPARSE_OFFSET} count=4 2>/dev/null)"
outcome user-read-private su user -c 'cat /mnt/private.txt'
outcome user-remove-others su user -c 'rm -f /mnt/dated'
step user-create su user -c 'echo mine > /mnt/open/mine.txt'
value user-owner $(stat -c %u:%g /mnt/open/mine.txt)
value user-read-own "$(su user -c 'cat /mnt/open/mine.txt')"
ip addr add {GUEST_V6} dev eth0
i=0; while [ $i -lt 100 ] && ip -6 addr show dev eth0 | grep -q tentative; do sleep 0.1; i=$((i+1)); done
mkdir -p /mnt6
step mount-v6 mount -t nfs -o {MOUNT_OPTIONS},proto=tcp6 [{vip6}]:/{export} /mnt6
value mount-v6 "$(grep ' /mnt6 nfs ' /proc/mounts)"
step write-v6 sh -c 'echo over-ipv6 > /mnt6/six.txt'
value read-v4 "$(cat /mnt/six.txt)"
step umount-v6 umount /mnt6
step umount umount /mnt
"#,
            vip6 = vip6,
            export = cluster::DEMO_EXPORT
        );
    let (report, console) = run_guest(&lab, kit, &script);
    eprintln!("node warnings and errors:\n{}", node_complaints(&lab));
    assert_eq!(
        report.result,
        Some(true),
        "{}",
        describe(&report, &console, &lab)
    );
    let expect = |name: &str, wanted: &str| {
        assert_eq!(
            report.value(name),
            Some(wanted),
            "{name}: {}",
            describe(&report, &console, &lab)
        );
    };
    // Unlinking an open file renames it to `.nfs…` (the client's "silly rename"); the open
    // file reads on through its handle, and the last close removes it.
    expect("silly-hidden", "1");
    expect("silly-read", "silly");
    expect("silly-after", "0");
    expect("rename-over", "first");
    // O_EXCL is an EXCLUSIVE CREATE: the second one must fail with EEXIST.
    expect("excl-second", "refused");
    expect("dated-mtime", "981173106");
    expect("fifo-type", "fifo");
    expect("sparse-size", &(5u64 << 30).to_string());
    expect("sparse-tail", "tail");
    expect("crowd", &CROWD.to_string());
    expect("crowd-unique", &CROWD.to_string());
    // Root is squashed to the anonymous user, which may not give files away.
    expect("chown", "refused");
    // uid 1000 acts as itself: not the owner of root's private file nor of the export's root.
    expect("user-read-private", "refused");
    expect("user-remove-others", "refused");
    expect("user-owner", "1000:1000");
    expect("user-read-own", "mine");
    // The same export over IPv6 (rpcbind GETADDR for tcp6, MOUNT and NFS on the IPv6 VIP).
    assert!(
        report
            .value("mount-v6")
            .is_some_and(|mount| mount.contains("proto=tcp6")),
        "{:?}",
        report.value("mount-v6")
    );
    expect("read-v4", "over-ipv6");

    // What landed on the shared volume, read directly.
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let export = cluster::volume_source(lab.name()).join(cluster::DEMO_EXPORT);
    let names: Vec<String> = std::fs::read_dir(&export)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names
            .iter()
            .any(|name| name.starts_with(".nfs") || name == "silly.txt"),
        "{names:?}"
    );
    assert_eq!(
        std::fs::read_to_string(export.join("rb")).unwrap(),
        "first\n"
    );
    assert!(!export.join("ra").exists());
    assert_eq!(
        std::fs::read_to_string(export.join("excl")).unwrap(),
        "one\n"
    );
    assert_eq!(
        std::fs::metadata(export.join("dated")).unwrap().mtime(),
        981_173_106
    );
    assert!(
        std::fs::symlink_metadata(export.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // Never read 5 GiB: check the size and the one written block.
    let sparse = std::fs::File::open(export.join("sparse.bin")).unwrap();
    assert_eq!(sparse.metadata().unwrap().len(), 5 << 30);
    let mut tail = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&sparse, &mut tail, SPARSE_OFFSET).unwrap();
    assert_eq!(&tail, b"tail");
    assert_eq!(
        std::fs::read_dir(export.join("crowd")).unwrap().count(),
        CROWD
    );
    let private = std::fs::metadata(export.join("private.txt")).unwrap();
    assert_eq!(
        (private.uid(), private.gid(), private.mode() & 0o7777),
        (
            cluster::DEMO_EXPORT_OWNER,
            cluster::DEMO_EXPORT_OWNER,
            0o600
        )
    );
    let mine = std::fs::metadata(export.join("open/mine.txt")).unwrap();
    assert_eq!((mine.uid(), mine.gid()), (1000, 1000));
    assert!(
        !node_complaints(&lab).contains("panicked"),
        "a node panicked:\n{}",
        node_complaints(&lab)
    );
}

#[test]
fn a_stock_mount_without_a_version_negotiates_nfsv3() {
    let test = "a_stock_mount_without_a_version_negotiates_nfsv3";
    let Some((lab, kit)) = cluster_and_kit(test) else {
        return;
    };
    // nfs-utils' own mount.nfs (what `mount -t nfs` runs) with no version: it asks for NFSv4
    // first, gets PROG_MISMATCH (NFS 3 to 3), and falls back to NFSv3 through portmap and
    // MOUNT, which it asks for over UDP first. `nolock` because the guest runs no rpc.statd.
    // libtirpc wants its transports (/etc/netconfig), the `sunrpc` service and the protocols.
    let extra = host_files(
        &[MOUNT_NFS],
        &["/etc/netconfig", "/etc/services", "/etc/protocols"],
    )
    .unwrap();
    let vip = first_v4();
    let script = format!(
        r#"
step mount {MOUNT_NFS} {vip}:/{export} /mnt -n -v -o nolock
value mount "$(grep ' /mnt nfs' /proc/mounts)"
step write sh -c 'echo negotiated > /mnt/stock.txt'
step umount umount /mnt
"#,
        export = cluster::DEMO_EXPORT
    );
    let mut guest = Guest::boot_with(&lab, kit, GUEST_ADDRESS, &script, &extra).unwrap();
    let console = guest
        .wait_end(GUEST_DEADLINE)
        .unwrap_or_else(|error| panic!("{error}\n{}\n{}", guest.console(), logs(&lab)));
    let report = parse_console(&console);
    assert_eq!(
        report.result,
        Some(true),
        "{}",
        describe(&report, &console, &lab)
    );
    let negotiation: Vec<&str> = console
        .lines()
        .filter(|line| line.starts_with("mount.nfs:"))
        .collect();
    eprintln!("stock mount:\n{}", negotiation.join("\n"));
    let mount = report.value("mount").unwrap_or_default();
    // It found MOUNT over UDP (what mount.nfs asks for first), and the kernel's MNT went there.
    assert!(
        mount.contains("vers=3")
            && mount.contains(&format!("addr={vip}"))
            && mount.contains("mountproto=udp"),
        "{mount}"
    );
    let export = cluster::volume_source(lab.name()).join(cluster::DEMO_EXPORT);
    assert_eq!(
        std::fs::read_to_string(export.join("stock.txt")).unwrap(),
        "negotiated\n"
    );
}

/// The guest uptime a `VIPGATE-<marker> <uptime>` line reports.
fn marker_time(console: &str, marker: &str) -> Option<f64> {
    let needle = format!("VIPGATE-{marker} ");
    console.lines().find_map(|line| {
        let rest = &line[line.find(&needle)? + needle.len()..];
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// The `VIPGATE-CHUNK <index> <uptime>` lines of the failover script.
fn chunks(console: &str) -> Vec<(u32, f64)> {
    console
        .lines()
        .filter_map(|line| {
            let rest = &line[line.find("VIPGATE-CHUNK ")? + "VIPGATE-CHUNK ".len()..];
            let mut fields = rest.split_whitespace();
            Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
        })
        .collect()
}

/// The operation count of a `/proc/self/mountstats` per-operation line (`WRITE: ops trans …`).
fn operations(line: Option<&str>) -> Option<u64> {
    line?.split_whitespace().nth(1)?.parse().ok()
}

/// What moves the VIP away from its owner during the long write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Disruption {
    /// SIGKILL of the owner's `vipgate node`: the lease runs out, a survivor takes the VIP.
    Kill,
    /// `vipgate moveip` to another node: the planned release-then-take.
    Move,
    /// SIGSTOP of the owner's `vipgate node` (a hung daemon): its kernel keeps the client's
    /// connection open, so only the new owner's tickle makes the client reconnect at once.
    Stop,
}

#[test]
fn a_kernel_client_keeps_writing_through_a_failover() {
    long_write_through(
        "a_kernel_client_keeps_writing_through_a_failover",
        Disruption::Kill,
    );
}

#[test]
fn a_kernel_client_keeps_writing_through_a_hung_owner() {
    long_write_through(
        "a_kernel_client_keeps_writing_through_a_hung_owner",
        Disruption::Stop,
    );
}

#[test]
fn a_kernel_client_keeps_writing_through_a_planned_move() {
    long_write_through(
        "a_kernel_client_keeps_writing_through_a_planned_move",
        Disruption::Move,
    );
}

/// A long write from the kernel client through `disruption` of the VIP's owner: every byte
/// arrives, and the longest pause between chunks is what the writer saw of the move.
fn long_write_through(test: &str, disruption: Disruption) {
    let Some((lab, kit)) = cluster_and_kit(test) else {
        return;
    };
    let vip = first_v4();
    // One long write through one open file: chunks of 4 MiB, each after a line naming it, go
    // out as UNSTABLE WRITEs of 1 MiB (the kernel's wsize) while the writer goes on, with
    // COMMITs now and then; little dirty data is allowed, so the writer follows the server.
    // The test kills the VIP's owner (or moves the VIP) after chunk 2; the writer stops 4 chunks after the guest
    // learned the VIP's new hardware address (the new owner's gratuitous ARP), or at 24. A
    // COMMIT the new owner answers with its own write verifier makes the kernel send the
    // uncommitted WRITEs again. The same bytes are then rebuilt locally and compared.
    let script = mount_script(vip)
        + &format!(
            r#"
mac() {{ awk -v ip={vip} '$1 == ip {{ print $4 }}' /proc/net/arp; }}
before=$(mac)
value mac-before $before
echo 2097152 > /proc/sys/vm/dirty_background_bytes
echo 8388608 > /proc/sys/vm/dirty_bytes
dd if=/dev/urandom of=/tmp/chunk bs=1M count=4 2>/dev/null
(
  i=0; moved=0
  while [ $i -lt 24 ]; do
    i=$((i+1))
    echo "chunk $i" && cat /tmp/chunk || exit 1
    echo $i > /tmp/count
    echo "VIPGATE-CHUNK $i $(cut -d' ' -f1 /proc/uptime)" >&2
    if [ "$(mac)" != "$before" ]; then moved=$((moved+1)); [ $moved -ge 4 ] && break; fi
  done
) > /mnt/big.bin
rc=$?
if [ $rc = 0 ]; then echo "VIPGATE-STEP long-write ok"; else echo "VIPGATE-STEP long-write FAIL rc=$rc"; failed=1; fi
value chunks $(cat /tmp/count)
value mac-after $(mac)
i=0; n=$(cat /tmp/count)
while [ $i -lt $n ]; do i=$((i+1)); echo "chunk $i"; cat /tmp/chunk; done > /tmp/expected
value expected-sha256 $(sha256sum /tmp/expected | cut -d' ' -f1)
step drop-caches sh -c 'sync && echo 3 > /proc/sys/vm/drop_caches'
value readback-sha256 $(sha256sum /mnt/big.bin | cut -d' ' -f1)
value xprt "$(grep 'xprt:' /proc/self/mountstats)"
value write-stats "$(grep '  WRITE:' /proc/self/mountstats)"
value commit-stats "$(grep '  COMMIT:' /proc/self/mountstats)"
step umount umount /mnt
"#
        );
    let owner = owner_of(&lab, vip);
    let mut guest = Guest::boot(&lab, kit, GUEST_ADDRESS, &script).unwrap();
    let console = guest
        .wait_for("VIPGATE-CHUNK 2 ", GUEST_DEADLINE)
        .unwrap_or_else(|error| panic!("{error}\n{}\n{}", guest.console(), logs(&lab)));
    let target = common::cluster::NODES
        .iter()
        .copied()
        .find(|node| *node != owner)
        .unwrap();
    let killed = Instant::now();
    match disruption {
        Disruption::Kill => signal(&lab, owner, Signal::SIGKILL),
        Disruption::Stop => signal(&lab, owner, Signal::SIGSTOP),
        Disruption::Move => {
            let (code, text) =
                common::cluster::vipgate(&lab, target, &["moveip", &vip.to_string(), target]);
            assert_eq!(code, 0, "moveip: {text}");
        }
    }
    let written_at_kill = chunks(&console).last().map_or(0, |(index, _)| *index);
    let console = guest
        .wait_end(GUEST_DEADLINE)
        .unwrap_or_else(|error| panic!("{error}\n{}\n{}", guest.console(), logs(&lab)));
    let report = parse_console(&console);
    let written = chunks(&console);
    // The longest pause between two chunks, in guest time: the failover as the writer saw it.
    let stall = written
        .windows(2)
        .map(|pair| pair[1].1 - pair[0].1)
        .fold(0.0, f64::max);
    // WRITEs beyond one per MiB written were sent again (after a verifier change).
    let writes = operations(report.value("write-stats"));
    eprintln!(
        "kernel client, {disruption:?} ({}): {owner} disrupted after chunk {written_at_kill}; \
         {} chunks; longest gap between chunks {stall:.2} s; guest finished {:?} after it; \
         {writes:?} WRITEs for {} MiB; VIP hardware address {:?} -> {:?}\n\
         xprt: {:?}\nwrite: {:?}\ncommit: {:?}",
        kit.accel.name(),
        written.len(),
        killed.elapsed(),
        written.len() * 4,
        report.value("mac-before"),
        report.value("mac-after"),
        report.value("xprt"),
        report.value("write-stats"),
        report.value("commit-stats"),
    );
    eprintln!("node warnings and errors:\n{}", node_complaints(&lab));
    assert_eq!(
        report.result,
        Some(true),
        "{}",
        describe(&report, &console, &lab)
    );
    assert!(
        written
            .last()
            .is_some_and(|(index, _)| *index > written_at_kill),
        "no chunk was written after the {disruption:?}: {written:?}"
    );
    assert_ne!(
        report.value("mac-before"),
        report.value("mac-after"),
        "the guest never learned the VIP's new owner"
    );
    let expected = report.value("expected-sha256").unwrap();
    assert_eq!(report.value("readback-sha256"), Some(expected));
    let export = cluster::volume_source(lab.name()).join(cluster::DEMO_EXPORT);
    assert_eq!(sha256_of(&export.join("big.bin")), expected);
    let now = holders(&lab)[&vip].clone();
    match disruption {
        Disruption::Kill | Disruption::Stop => assert!(
            now.len() == 1 && now[0] != owner,
            "{vip} should be on one survivor: {now:?}"
        ),
        Disruption::Move => assert_eq!(now, [target], "{vip} should be where it was sent"),
    }
}

/// The count (field 1) or bytes sent (field 4) of a `/proc/self/mountstats` operation line.
fn mountstats_field(line: Option<&str>, field: usize) -> Option<u64> {
    line?.split_whitespace().nth(field)?.parse().ok()
}

#[test]
fn a_kernel_client_sends_uncommitted_writes_again_to_the_new_owner() {
    let test = "a_kernel_client_sends_uncommitted_writes_again_to_the_new_owner";
    let Some((lab, kit)) = cluster_and_kit(test) else {
        return;
    };
    let vip = first_v4();
    // The default (lazy) writeback ends every pass with a COMMIT, so acknowledged but
    // uncommitted data exists only for a moment. With `write=eager` every write() goes out at
    // once, as UNSTABLE WRITEs when it spans more than one wsize, and only fsync or close
    // commits. So `dd` writes 8 MiB in two write() calls of 4 MiB and then waits on a FIFO the
    // shell holds open, keeping the file open (any close of a writable NFS file commits). The
    // test kills the VIP's owner; once the guest has learned the VIP's new hardware address,
    // `sync FILE` (fsync) sends the COMMIT to the new owner, whose write verifier differs, so
    // the kernel must send the 8 MiB again before the fsync returns.
    let script = mount_script(vip).replace(MOUNT_OPTIONS, &format!("{MOUNT_OPTIONS},write=eager"))
        + &format!(
            r#"
mac() {{ awk -v ip={vip} '$1 == ip {{ print $4 }}' /proc/net/arp; }}
stats() {{ awk -v op="$1:" '$1 == op {{ print }}' /proc/self/mountstats; }}
sent() {{ stats WRITE | awk '{{ print $5 }}'; }}
before=$(mac)
value mac-before $before
dd if=/dev/urandom of=/tmp/source bs=1M count=8 2>/dev/null
value source-sha256 $(sha256sum /tmp/source | cut -d' ' -f1)
value write-written "$(stats WRITE)"
value commit-written "$(stats COMMIT)"
mkfifo /tmp/feed
dd if=/tmp/feed of=/mnt/unstable.bin bs=4M iflag=fullblock 2>/dev/null &
holder=$!
exec 4>/tmp/feed
cat /tmp/source >&4
waited=0
while [ "$(sent)" -lt 8388608 ] && [ $waited -lt 300 ]; do usleep 100000; waited=$((waited+1)); done
value write-before "$(stats WRITE)"
value commit-before "$(stats COMMIT)"
echo VIPGATE-UNCOMMITTED
waited=0
while [ "$(mac)" = "$before" ] && [ $waited -lt 600 ]; do usleep 100000; waited=$((waited+1)); done
value mac-after $(mac)
step fsync sync /mnt/unstable.bin
value write-after "$(stats WRITE)"
value commit-after "$(stats COMMIT)"
exec 4>&-
step holder wait $holder
step drop-caches sh -c 'echo 3 > /proc/sys/vm/drop_caches'
value readback-sha256 $(sha256sum /mnt/unstable.bin | cut -d' ' -f1)
step umount umount /mnt
"#
        );
    let owner = owner_of(&lab, vip);
    let mut guest = Guest::boot(&lab, kit, GUEST_ADDRESS, &script).unwrap();
    guest
        .wait_for("VIPGATE-UNCOMMITTED", GUEST_DEADLINE)
        .unwrap_or_else(|error| panic!("{error}\n{}\n{}", guest.console(), logs(&lab)));
    signal(&lab, owner, Signal::SIGKILL);
    let console = guest
        .wait_end(GUEST_DEADLINE)
        .unwrap_or_else(|error| panic!("{error}\n{}\n{}", guest.console(), logs(&lab)));
    let report = parse_console(&console);
    eprintln!(
        "kernel client verifier ({}): {owner} killed; WRITE {:?} -> {:?} -> {:?}; \
         COMMIT {:?} -> {:?} -> {:?}",
        kit.accel.name(),
        report.value("write-written"),
        report.value("write-before"),
        report.value("write-after"),
        report.value("commit-written"),
        report.value("commit-before"),
        report.value("commit-after"),
    );
    eprintln!("node warnings and errors:\n{}", node_complaints(&lab));
    assert_eq!(
        report.result,
        Some(true),
        "{}",
        describe(&report, &console, &lab)
    );
    assert_ne!(
        report.value("mac-before"),
        report.value("mac-after"),
        "the guest never learned the VIP's new owner"
    );
    // The premise: all 8 MiB went out before the kill and nothing committed them.
    let sent = |name: &str| mountstats_field(report.value(name), 4).unwrap_or(0);
    let uncommitted = sent("write-before").saturating_sub(sent("write-written"));
    assert!(uncommitted >= 8 << 20, "{report:?}");
    assert_eq!(
        mountstats_field(report.value("commit-before"), 1),
        mountstats_field(report.value("commit-written"), 1),
        "something committed the writes before the kill: {report:?}"
    );
    // The new owner's verifier made the kernel send every uncommitted byte again.
    let resent = sent("write-after").saturating_sub(sent("write-before"));
    assert!(
        resent >= uncommitted,
        "the kernel sent {resent} of {uncommitted} uncommitted bytes again: {report:?}"
    );
    let source = report.value("source-sha256").unwrap();
    assert_eq!(report.value("readback-sha256"), Some(source));
    let export = cluster::volume_source(lab.name()).join(cluster::DEMO_EXPORT);
    assert_eq!(sha256_of(&export.join("unstable.bin")), source);
}
