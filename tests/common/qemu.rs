//! A Linux kernel NFS client under QEMU for the lab tests: Debian's own kernel booted with a
//! small initramfs (static busybox, the kernel's virtio-net and NFS modules, a generated `/init`)
//! on a tap device plugged into the lab's public bridge, running a shell script the test wrote
//! and reporting on the serial console with `VIPGATE-` marker lines.
//!
//! The kernel comes from Debian's `linux-image-amd64` dependency, fetched with `apt-get download`
//! and unpacked once into [`CACHE_DIR`]`/<package>_<version>-<layout>/` (the kernel image, the
//! modules the guest loads and their load order; nothing is installed into `/boot`). Pure parts
//! (apt output, module dependencies from `.modinfo`, the cpio writer, the init script, the
//! console report) are table-tested in `tests/kernel_client.rs`; the rest is the I/O shell.
//!
//! QEMU uses KVM only when `/dev/kvm` opens and the CPU advertises VMX or SVM (a nested guest
//! that exposes `/dev/kvm` without them hangs in early boot); otherwise TCG.
//! `VIPGATE_QEMU_ACCEL=kvm|tcg` overrides the choice.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vipgate::lab::Lab;

/// Where prepared kernels live, one directory per kernel package version.
pub const CACHE_DIR: &str = "/var/cache/vipgate-test/kernel";
/// The Debian metapackage whose dependency names the current kernel package.
pub const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// Bumped whenever what a cache directory holds changes, so an old layout is not reused.
const CACHE_LAYOUT: &str = "v2";
/// The modules the guest needs (their dependencies follow): the virtio PCI transport and NIC,
/// and the NFSv3 and NFSv4 clients (a stock `mount.nfs` tries NFSv4 first and falls back to v3
/// when the server refuses it, as every client with NFSv4 does). A root the package does not
/// ship as a module is built in.
pub const ROOT_MODULES: [&str; 4] = ["virtio_pci", "virtio_net", "nfsv3", "nfsv4"];
/// The QEMU binary.
pub const QEMU: &str = "qemu-system-x86_64";
/// Every console line meant for the test starts with this.
pub const MARKER: &str = "VIPGATE-";
/// The guest's NIC as the switch namespace sees it.
const TAP: &str = "guest0";

/// What the guest boots: the kernel image and its modules in load order, and a static busybox.
#[derive(Debug, Clone)]
pub struct Kit {
    pub key: String,
    pub kernel: PathBuf,
    /// Module names in load order, each at `modules_dir/<name>.ko`.
    pub modules: Vec<String>,
    pub modules_dir: PathBuf,
    pub busybox: PathBuf,
    pub accel: Accel,
}

/// The QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parts.

/// The kernel package `apt-cache depends linux-image-amd64` names.
pub fn kernel_package(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|line| {
        let rest = line
            .trim()
            .trim_start_matches('|')
            .strip_prefix("Depends:")?;
        let name = rest.trim();
        (name.starts_with("linux-image-") && !name.contains(['<', '>', ' '])).then(|| name.into())
    })
}

/// The `Version:` of the first record `apt-cache show --no-all-versions` printed.
pub fn package_version(apt_cache_show: &str) -> Option<String> {
    apt_cache_show
        .lines()
        .find_map(|line| line.strip_prefix("Version:"))
        .map(|version| version.trim().to_owned())
        .filter(|version| !version.is_empty())
}

/// The cache directory name of a kernel package version: safe for a path whatever the version.
pub fn cache_key(package: &str, version: &str) -> String {
    let safe = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~' | '-') {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!("{}_{}-{CACHE_LAYOUT}", safe(package), safe(version))
}

/// A module's name as the kernel knows it (`-` and `_` are the same in module names).
pub fn module_name(file_name: &str) -> Option<String> {
    let stem = file_name.strip_suffix(".ko")?;
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

/// Why a module file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModinfoError {
    #[error("not a 64-bit little-endian ELF file")]
    NotElf64,
    #[error("section headers at {0} lie outside the file")]
    Sections(u64),
    #[error("no .modinfo section")]
    NoModinfo,
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

fn is_elf64_le(elf: &[u8]) -> bool {
    elf.starts_with(b"\x7fELF") && elf.get(4) == Some(&2) && elf.get(5) == Some(&1)
}

/// The `depends=` list of a kernel module's `.modinfo` section (what `modinfo -F depends`
/// prints), read from the ELF section headers.
pub fn modinfo_depends(elf: &[u8]) -> Result<Vec<String>, ModinfoError> {
    if !is_elf64_le(elf) {
        return Err(ModinfoError::NotElf64);
    }
    let header = || -> Option<(usize, usize, usize, usize)> {
        let offset = usize::try_from(le_u64(elf, 0x28)?).ok()?;
        let entry = usize::from(le_u16(elf, 0x3a)?);
        let count = usize::from(le_u16(elf, 0x3c)?);
        let names = usize::from(le_u16(elf, 0x3e)?);
        Some((offset, entry, count, names))
    };
    let (table, entry, count, names) = header().ok_or(ModinfoError::NotElf64)?;
    let section = |index: usize| -> Option<(u32, &[u8])> {
        let at = table.checked_add(index.checked_mul(entry)?)?;
        let name = le_u32(elf, at)?;
        let offset = usize::try_from(le_u64(elf, at + 24)?).ok()?;
        let size = usize::try_from(le_u64(elf, at + 32)?).ok()?;
        Some((name, elf.get(offset..offset.checked_add(size)?)?))
    };
    let (_, name_table) = section(names).ok_or(ModinfoError::Sections(table as u64))?;
    let modinfo = (0..count)
        .filter_map(section)
        .find(|(name, _)| {
            let start = *name as usize;
            name_table
                .get(start..)
                .and_then(|rest| rest.split(|byte| *byte == 0).next())
                == Some(b".modinfo".as_slice())
        })
        .map(|(_, bytes)| bytes)
        .ok_or(ModinfoError::NoModinfo)?;
    Ok(modinfo
        .split(|byte| *byte == 0)
        .filter_map(|field| field.strip_prefix(b"depends="))
        .flat_map(|list| list.split(|byte| *byte == b','))
        .filter(|name| !name.is_empty())
        .map(|name| String::from_utf8_lossy(name).replace('-', "_"))
        .collect())
}

/// Whether an ELF executable is static (no program interpreter), so it runs alone in an
/// initramfs.
pub fn elf_is_static(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if !is_elf64_le(elf) {
        return false;
    }
    let Some((offset, entry, count)) = (|| {
        let offset = usize::try_from(le_u64(elf, 0x20)?).ok()?;
        Some((
            offset,
            usize::from(le_u16(elf, 0x36)?),
            usize::from(le_u16(elf, 0x38)?),
        ))
    })() else {
        return false;
    };
    (0..count).all(|index| {
        offset
            .checked_add(index * entry)
            .and_then(|at| le_u32(elf, at))
            .is_some_and(|kind| kind != PT_INTERP)
    })
}

/// The modules to load, dependencies first, for `roots`. `depends` answers a module's
/// dependencies, or `None` when the package has no such module: a root it lacks is built into
/// the kernel and skipped; a dependency it lacks is an error.
pub fn load_order(
    roots: &[&str],
    depends: &mut dyn FnMut(&str) -> Option<Vec<String>>,
) -> Result<Vec<String>, String> {
    fn visit(
        name: &str,
        needed_by: Option<&str>,
        depends: &mut dyn FnMut(&str) -> Option<Vec<String>>,
        visiting: &mut BTreeSet<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if order.iter().any(|done| done == name) {
            return Ok(());
        }
        if !visiting.insert(name.to_owned()) {
            return Err(format!(
                "modules depend on each other in a cycle through {name}"
            ));
        }
        let Some(dependencies) = depends(name) else {
            return match needed_by {
                None => Ok(()),
                Some(parent) => Err(format!(
                    "module {parent} needs {name}, which the kernel package does not have"
                )),
            };
        };
        for dependency in &dependencies {
            visit(dependency, Some(name), depends, visiting, order)?;
        }
        order.push(name.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    let mut visiting = BTreeSet::new();
    for root in roots {
        visit(root, None, depends, &mut visiting, &mut order)?;
    }
    Ok(order)
}

/// One entry of an initramfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpioEntry {
    Directory {
        path: String,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    CharDevice {
        path: String,
        major: u32,
        minor: u32,
    },
}

/// The "newc" cpio archive of `entries`, as the kernel unpacks an initramfs: a 110-byte ASCII
/// header per entry, the NUL-terminated name and the data each padded to 4 bytes, then
/// `TRAILER!!!`. Everything belongs to root.
pub fn cpio_newc(entries: &[CpioEntry]) -> Vec<u8> {
    fn push(out: &mut Vec<u8>, inode: u32, mode: u32, rdev: (u32, u32), name: &str, data: &[u8]) {
        // `Vec<u8>` is not `fmt::Write`; the header's hex fields go through `io::Write`.
        use std::io::Write as _;
        let name_size = name.len() + 1;
        let fields = [
            inode,
            mode,
            0, // uid
            0, // gid
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            0, // mtime: reproducible archives
            u32::try_from(data.len()).unwrap_or(u32::MAX),
            0,
            0,
            rdev.0,
            rdev.1,
            u32::try_from(name_size).unwrap_or(u32::MAX),
            0, // check
        ];
        out.extend_from_slice(b"070701");
        for field in fields {
            let _ = out.write_fmt(format_args!("{field:08x}"));
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.resize(out.len().next_multiple_of(4), 0);
        out.extend_from_slice(data);
        out.resize(out.len().next_multiple_of(4), 0);
    }
    let mut out = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let inode = u32::try_from(index + 1).unwrap_or(u32::MAX);
        match entry {
            CpioEntry::Directory { path } => push(&mut out, inode, 0o040755, (0, 0), path, &[]),
            CpioEntry::File { path, mode, data } => {
                push(
                    &mut out,
                    inode,
                    0o100000 | (mode & 0o7777),
                    (0, 0),
                    path,
                    data,
                );
            }
            CpioEntry::CharDevice { path, major, minor } => {
                push(&mut out, inode, 0o020600, (*major, *minor), path, &[]);
            }
        }
    }
    push(&mut out, 0, 0, (0, 0), "TRAILER!!!", &[]);
    out
}

/// The guest's `/init`: mount the pseudo filesystems, load `modules`, bring up `eth0` with
/// `address` (CIDR), define the `step` and `value` reporting helpers, run `/script`, report
/// the overall result and power off. A script's failed step never stops the others.
pub fn init_script(modules: &[String], address: &str) -> String {
    let mut text = String::from(
        "#!/bin/busybox sh\n\
         /bin/busybox --install -s /bin\n\
         export PATH=/bin\n\
         mount -t proc proc /proc\n\
         mount -t sysfs sysfs /sys\n\
         mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         echo \"VIPGATE-BOOTED $(cut -d' ' -f1 /proc/uptime)\"\n\
         failed=0\n\
         # step NAME COMMAND...: runs COMMAND and reports whether it worked.\n\
         step() {\n\
         \x20 name=$1; shift\n\
         \x20 if \"$@\"; then echo \"VIPGATE-STEP $name ok\"; \
         else rc=$?; echo \"VIPGATE-STEP $name FAIL rc=$rc\"; failed=1; fi\n\
         }\n\
         # value NAME TEXT...: reports a value the test checks.\n\
         value() { name=$1; shift; echo \"VIPGATE-VALUE $name $*\"; }\n",
    );
    for module in modules {
        let _ = writeln!(text, "step insmod-{module} insmod /modules/{module}.ko");
    }
    let _ = writeln!(
        text,
        "ip link set lo up\n\
         step eth0-up ip link set eth0 up\n\
         step eth0-address ip addr add {address} dev eth0\n\
         echo \"VIPGATE-READY $(cut -d' ' -f1 /proc/uptime)\"\n\
         . /script\n\
         if [ $failed = 0 ]; then echo VIPGATE-RESULT ok; else echo VIPGATE-RESULT fail; fi\n\
         echo \"VIPGATE-END $(cut -d' ' -f1 /proc/uptime)\"\n\
         poweroff -f"
    );
    text
}

/// The accelerator to use: the override if given, else KVM only when it is usable.
pub fn choose_accel(override_: Option<&str>, kvm_usable: bool) -> Result<Accel, String> {
    match override_.map(str::trim) {
        Some("kvm") => Ok(Accel::Kvm),
        Some("tcg") => Ok(Accel::Tcg),
        Some(other) if !other.is_empty() => {
            Err(format!("VIPGATE_QEMU_ACCEL is {other:?}; use kvm or tcg"))
        }
        _ if kvm_usable => Ok(Accel::Kvm),
        _ => Ok(Accel::Tcg),
    }
}

/// Whether `/proc/cpuinfo` advertises hardware virtualisation (VMX or SVM).
pub fn cpu_has_virtualisation(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("flags"))
        .any(|line| {
            line.split_whitespace()
                .any(|flag| flag == "vmx" || flag == "svm")
        })
}

/// What the guest reported on its console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestReport {
    /// Each `step` in order: its name and `None` if it worked, else the failure text.
    pub steps: Vec<(String, Option<String>)>,
    /// Each `value` by name (a repeated name keeps the last).
    pub values: BTreeMap<String, String>,
    /// `VIPGATE-RESULT ok|fail`, once the script has finished.
    pub result: Option<bool>,
    /// Whether `VIPGATE-END` was printed.
    pub ended: bool,
}

impl GuestReport {
    pub fn failed_steps(&self) -> Vec<String> {
        self.steps
            .iter()
            .filter_map(|(name, failure)| failure.as_ref().map(|text| format!("{name}: {text}")))
            .collect()
    }

    pub fn step_ok(&self, name: &str) -> bool {
        self.steps
            .iter()
            .any(|(step, failure)| step == name && failure.is_none())
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// Reads the marker lines of a console transcript. A marker may follow other text on its line
/// (a kernel message without a newline), so it is found anywhere in the line.
pub fn parse_console(console: &str) -> GuestReport {
    let mut report = GuestReport::default();
    for line in console.lines() {
        let Some(at) = line.find(MARKER) else {
            continue;
        };
        let line = line[at + MARKER.len()..].trim_end_matches('\r');
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "STEP" => {
                let (name, outcome) = rest.split_once(' ').unwrap_or((rest, ""));
                let failure = (outcome.trim() != "ok").then(|| outcome.trim().to_owned());
                report.steps.push((name.to_owned(), failure));
            }
            "VALUE" => {
                let (name, value) = rest.split_once(' ').unwrap_or((rest, ""));
                report
                    .values
                    .insert(name.to_owned(), value.trim().to_owned());
            }
            "RESULT" => report.result = Some(rest.trim() == "ok"),
            "END" => report.ended = true,
            _ => {}
        }
    }
    report
}

// ---------------------------------------------------------------------------------------------
// The I/O shell.

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
}

fn run(command: &mut Command) -> Result<String, String> {
    let description = format!("{command:?}");
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|error| format!("cannot run {description}: {error}"))?;
    if !output.status.success() {
        return Err(format!(
            "{description} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Why the machine cannot run a guest at all, or `None` if it can.
fn cannot_run_qemu() -> Option<String> {
    if find_program(QEMU).is_none() {
        return Some(format!("{QEMU} is not installed (Debian: qemu-system-x86)"));
    }
    if !Path::new("/dev/net/tun").exists() {
        return Some("/dev/net/tun is missing, so the guest cannot have a tap NIC".into());
    }
    None
}

fn kvm_usable() -> bool {
    let opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    opens
        && std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|cpuinfo| cpu_has_virtualisation(&cpuinfo))
}

/// The kit, prepared once per test process; `None` (after a loud skip message) only when QEMU
/// cannot run here at all. Under CI a missing QEMU fails the test instead: `tests/run`
/// installs it. Any other problem (no kernel package, a broken download) fails the test.
pub fn kit_or_skip(test: &str) -> Option<&'static Kit> {
    static KIT: OnceLock<Result<Kit, String>> = OnceLock::new();
    if let Some(reason) = cannot_run_qemu() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs QEMU, and CI must run it: {reason}"
        );
        eprintln!("SKIPPED {test}: {reason}");
        return None;
    }
    match KIT.get_or_init(prepare) {
        Ok(kit) => Some(kit),
        Err(error) => panic!("cannot prepare the guest kernel: {error}"),
    }
}

/// Finds or builds the cache directory of the current Debian kernel package.
fn prepare() -> Result<Kit, String> {
    let accel = choose_accel(
        std::env::var("VIPGATE_QEMU_ACCEL").ok().as_deref(),
        kvm_usable(),
    )?;
    let busybox = find_program("busybox").ok_or("busybox is not installed (busybox-static)")?;
    let bytes = std::fs::read(&busybox)
        .map_err(|error| format!("cannot read {}: {error}", busybox.display()))?;
    if !elf_is_static(&bytes) {
        return Err(format!(
            "{} is dynamically linked; install busybox-static",
            busybox.display()
        ));
    }
    let depends = run(Command::new("apt-cache").args(["depends", KERNEL_METAPACKAGE]))?;
    let package = kernel_package(&depends)
        .ok_or_else(|| format!("apt-cache names no kernel package for {KERNEL_METAPACKAGE}"))?;
    let show = run(Command::new("apt-cache").args(["show", "--no-all-versions", &package]))?;
    let version =
        package_version(&show).ok_or_else(|| format!("apt-cache shows no version of {package}"))?;
    let key = cache_key(&package, &version);
    let directory = Path::new(CACHE_DIR).join(&key);
    if !directory.join("ready").exists() {
        build_cache(&package, &directory)?;
    }
    let order = std::fs::read_to_string(directory.join("load-order")).map_err(|error| {
        format!(
            "cannot read the load order in {}: {error}",
            directory.display()
        )
    })?;
    Ok(Kit {
        key,
        kernel: directory.join("vmlinuz"),
        modules: order.split_whitespace().map(str::to_owned).collect(),
        modules_dir: directory.join("modules"),
        busybox,
        accel,
    })
}

/// Downloads `package`, keeps its kernel image and the modules the guest needs, and moves the
/// result to `directory` in one rename (a concurrent preparer's result is as good as ours).
fn build_cache(package: &str, directory: &Path) -> Result<(), String> {
    let cache = Path::new(CACHE_DIR);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let work = cache.join(format!(".work-{}-{nanos}", std::process::id()));
    let result = (|| {
        let kit = work.join("kit");
        std::fs::create_dir_all(kit.join("modules"))
            .map_err(|error| format!("cannot create {}: {error}", kit.display()))?;
        eprintln!(
            "kernel client: downloading {package} into {}",
            cache.display()
        );
        // apt drops to the `_apt` user to download unless told otherwise, and that user cannot
        // write into a root-only directory.
        run(Command::new("apt-get")
            .args(["-q", "-o", "APT::Sandbox::User=root", "download", package])
            .current_dir(&work))?;
        let deb = std::fs::read_dir(&work)
            .map_err(|error| format!("cannot list {}: {error}", work.display()))?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| path.extension().is_some_and(|extension| extension == "deb"))
            .ok_or_else(|| format!("apt-get download left no .deb for {package}"))?;
        let tree = work.join("tree");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        let vmlinuz = only_entry(&tree.join("boot"), "vmlinuz-")?;
        copy(&vmlinuz, &kit.join("vmlinuz"))?;
        let modules_root = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|relative| tree.join(relative))
            .find(|path| path.is_dir())
            .ok_or_else(|| format!("{package} has no lib/modules"))?;
        let release = only_entry(&modules_root, "")?;
        let mut files = BTreeMap::new();
        index_modules(&release, &mut files)?;
        let mut depends = |name: &str| -> Option<Vec<String>> {
            let path = files.get(name)?;
            let bytes = std::fs::read(path).ok()?;
            modinfo_depends(&bytes).ok()
        };
        let order = load_order(&ROOT_MODULES, &mut depends)?;
        for name in &order {
            let source = files
                .get(name)
                .ok_or_else(|| format!("module {name} vanished"))?;
            copy(source, &kit.join("modules").join(format!("{name}.ko")))?;
        }
        write(&kit.join("load-order"), &(order.join("\n") + "\n"))?;
        write(&kit.join("package"), &format!("{}\n", deb.display()))?;
        write(&kit.join("ready"), "")?;
        match std::fs::rename(&kit, directory) {
            Ok(()) => Ok(()),
            Err(_) if directory.join("ready").exists() => Ok(()),
            Err(error) => Err(format!(
                "cannot move the kernel to {}: {error}",
                directory.display()
            )),
        }
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn only_entry(directory: &Path, prefix: &str) -> Result<PathBuf, String> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(directory)
        .map_err(|error| format!("cannot list {}: {error}", directory.display()))?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .map(|entry| entry.path())
        .collect();
    match found.len() {
        1 => Ok(found.remove(0)),
        count => Err(format!(
            "expected one {prefix}* in {}, found {count}",
            directory.display()
        )),
    }
}

fn index_modules(directory: &Path, files: &mut BTreeMap<String, PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(directory)
        .map_err(|error| format!("cannot list {}: {error}", directory.display()))?;
    for entry in entries.filter_map(Result::ok) {
        let path = entry.path();
        if path.is_dir() {
            index_modules(&path, files)?;
        } else if let Some(name) = module_name(&entry.file_name().to_string_lossy()) {
            files.insert(name, path);
        }
    }
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to).map(|_| ()).map_err(|error| {
        format!(
            "cannot copy {} to {}: {error}",
            from.display(),
            to.display()
        )
    })
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|error| format!("cannot write {}: {error}", path.display()))
}

/// The shared objects `ldd` names for a program: each `=> /path` and the loader's own line.
pub fn ldd_paths(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, target)) => target.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

/// Every directory above each of `paths` (relative, parents first, once each).
pub fn parent_directories(paths: &[String]) -> Vec<String> {
    let mut directories: Vec<String> = Vec::new();
    for path in paths {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        for depth in 1..parts.len() {
            let directory = parts[..depth].join("/");
            if !directories.contains(&directory) {
                directories.push(directory);
            }
        }
    }
    directories
}

/// Host files for the guest at their own paths: `programs` with the shared libraries `ldd`
/// lists for them (the guest runs the host's binaries as they are), and plain `files`.
pub fn host_files(programs: &[&str], files: &[&str]) -> Result<Vec<CpioEntry>, String> {
    let mut paths: Vec<String> = Vec::new();
    for program in programs {
        let output = Command::new("ldd")
            .arg(program)
            .output()
            .map_err(|error| format!("cannot run ldd {program}: {error}"))?;
        if !output.status.success() {
            return Err(format!("ldd {program} failed"));
        }
        paths.push((*program).to_owned());
        paths.extend(ldd_paths(&String::from_utf8_lossy(&output.stdout)));
    }
    paths.extend(files.iter().map(|file| (*file).to_owned()));
    paths.dedup();
    let mut entries: Vec<CpioEntry> = parent_directories(&paths)
        .into_iter()
        .map(|path| CpioEntry::Directory { path })
        .collect();
    for path in &paths {
        let data = std::fs::read(path).map_err(|error| format!("cannot read {path}: {error}"))?;
        let mode = if programs.contains(&path.as_str()) || path.contains(".so") {
            0o755
        } else {
            0o644
        };
        entries.push(CpioEntry::File {
            path: path.trim_start_matches('/').to_owned(),
            mode,
            data,
        });
    }
    Ok(entries)
}

/// The initramfs of one guest: busybox, the kit's modules, `/init`, the test's `/script` and
/// `extra` entries (host programs, see [`host_files`]).
pub fn initramfs(
    kit: &Kit,
    address: &str,
    script: &str,
    extra: &[CpioEntry],
) -> Result<Vec<u8>, String> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|error| format!("cannot read {}: {error}", path.display()))
    };
    let mut entries: Vec<CpioEntry> = ["bin", "dev", "mnt", "modules", "proc", "sys", "tmp"]
        .iter()
        .map(|path| CpioEntry::Directory {
            path: (*path).to_owned(),
        })
        .collect();
    entries.push(CpioEntry::CharDevice {
        path: "dev/console".into(),
        major: 5,
        minor: 1,
    });
    entries.push(CpioEntry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: read(&kit.busybox)?,
    });
    for module in &kit.modules {
        entries.push(CpioEntry::File {
            path: format!("modules/{module}.ko"),
            mode: 0o644,
            data: read(&kit.modules_dir.join(format!("{module}.ko")))?,
        });
    }
    entries.push(CpioEntry::File {
        path: "init".into(),
        mode: 0o755,
        data: init_script(&kit.modules, address).into_bytes(),
    });
    entries.push(CpioEntry::File {
        path: "script".into(),
        mode: 0o644,
        data: script.as_bytes().to_vec(),
    });
    entries.extend_from_slice(extra);
    Ok(cpio_newc(&entries))
}

/// A guest booted into a lab: QEMU runs in the lab's switch namespace with its NIC on a tap
/// device plugged into the public bridge, as another host of the lab. Killed when dropped.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    console: PathBuf,
    pub booted_at: Instant,
}

impl Guest {
    /// Boots `kit` in `lab` with `address` (CIDR, on the public network) running `script`.
    pub fn boot(lab: &Lab, kit: &Kit, address: &str, script: &str) -> Result<Guest, String> {
        Self::boot_with(lab, kit, address, script, &[])
    }

    /// [`Guest::boot`] with `extra` files in the initramfs.
    pub fn boot_with(
        lab: &Lab,
        kit: &Kit,
        address: &str,
        script: &str,
        extra: &[CpioEntry],
    ) -> Result<Guest, String> {
        let directory = vipgate::lab::state::lab_dir(lab.name()).join("guest");
        std::fs::create_dir_all(&directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
        let initrd = directory.join("initramfs.cpio");
        std::fs::write(&initrd, initramfs(kit, address, script, extra)?)
            .map_err(|error| format!("cannot write {}: {error}", initrd.display()))?;
        let console = directory.join("console.log");
        let switch = &lab.plan().switch_netns;
        run(Command::new("ip").args(["-n", switch, "tuntap", "add", "dev", TAP, "mode", "tap"]))?;
        run(Command::new("ip").args([
            "-n",
            switch,
            "link",
            "set",
            TAP,
            "master",
            vipgate::lab::plan::PUBLIC_BRIDGE,
            "up",
        ]))?;
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", switch, QEMU])
            .args(["-accel", kit.accel.name(), "-m", "512", "-smp", "1"])
            .args([
                "-nodefaults",
                "-no-user-config",
                "-display",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&kit.kernel)
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 loglevel=3 panic=-1"])
            .arg("-netdev")
            .arg(format!("tap,id=net0,ifname={TAP},script=no,downscript=no"))
            .args([
                "-device",
                "virtio-net-pci,netdev=net0,romfile=,mac=52:54:00:c0:02:96",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(directory.join("qemu.stderr"))
                    .map_err(|error| format!("cannot create qemu.stderr: {error}"))?,
            );
        let child = lab
            .spawn("guest", command)
            .map_err(|error| format!("cannot start {QEMU}: {error}"))?;
        Ok(Guest {
            child,
            console,
            booted_at: Instant::now(),
        })
    }

    /// The console transcript so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console)
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// QEMU's own error output (why it did not start).
    pub fn qemu_errors(&self) -> String {
        std::fs::read_to_string(self.console.with_file_name("qemu.stderr")).unwrap_or_default()
    }

    /// Waits until the console holds `needle`; fails if QEMU exits first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String, String> {
        self.wait_until(&format!("{needle:?}"), timeout, |console| {
            console.contains(needle)
        })
    }

    /// Waits until `condition` holds for the console (`what` describes it); fails if QEMU exits
    /// first or `timeout` passes.
    pub fn wait_until(
        &mut self,
        what: &str,
        timeout: Duration,
        mut condition: impl FnMut(&str) -> bool,
    ) -> Result<String, String> {
        let deadline = Instant::now() + timeout;
        loop {
            let console = self.console();
            if condition(&console) {
                return Ok(console);
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // The console file may have been completed just before QEMU exited.
                let console = self.console();
                if condition(&console) {
                    return Ok(console);
                }
                return Err(format!(
                    "the guest stopped ({status}) before printing {what}; qemu said {:?}",
                    self.qemu_errors()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!("the guest did not print {what} within {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the script's end and QEMU's exit; returns the console.
    pub fn wait_end(&mut self, timeout: Duration) -> Result<String, String> {
        let console = self.wait_for(&format!("{MARKER}END"), timeout)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(self.console());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(console)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // `ip netns exec` executes QEMU in place, so this pid is QEMU's.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
