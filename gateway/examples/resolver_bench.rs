//! What each `ObjectResolver` call costs on a real directory: builds the resolver the gateway
//! would pick for `DIR` (`volume.handles: auto`, or the scheme given), makes a file, a
//! directory and a symbolic link in a scratch directory under `DIR`, checks that every id
//! opens back to its object, and times `object_id`, `object_id_at` and `open` (mean of N calls
//! on the same object after a warm-up); then the first use of 300 new files and directories
//! (a `statx` of new names as the reference, an id of each, an open of each id, and the
//! directories opened a second time). `tests/bench/gfid` runs it on a GlusterFS mount and on
//! the local disk.
//!
//! ```text
//! cargo run --release -p gateway --example resolver_bench -- DIR [auto|kernel|glusterfs-gfid] [N]
//! ```

use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use cluster_config::HandleScheme;
use gateway::gfid::{GfidResolver, read_mount_entry};
use gateway::handle::{KernelResolver, ObjectResolver, ResolverKind, resolver_kind};
use gateway::sys;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: resolver_bench DIR [scheme] [N]")?;
    let scheme = match args.next().as_deref() {
        None | Some("auto") => HandleScheme::Auto,
        Some("kernel") => HandleScheme::Kernel,
        Some("glusterfs-gfid") => HandleScheme::GlusterfsGfid,
        Some(other) => return Err(format!("unknown scheme {other}").into()),
    };
    let iterations: u32 = args.next().map_or(Ok(2000), |n| n.parse())?;

    let scratch = std::path::Path::new(&dir).join(format!("resolver-bench-{}", std::process::id()));
    std::fs::create_dir(&scratch)?;
    let outcome = run(&dir, &scratch, scheme, iterations);
    std::fs::remove_dir_all(&scratch)?;
    outcome
}

fn run(
    dir: &str,
    scratch: &std::path::Path,
    scheme: HandleScheme,
    iterations: u32,
) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::write(scratch.join("file"), b"x")?;
    std::fs::create_dir(scratch.join("dir"))?;
    std::os::unix::fs::symlink("file", scratch.join("link"))?;

    let root = sys::openat(None, &CString::new(dir)?, libc::O_PATH | libc::O_DIRECTORY)?;
    let root_stat = sys::fstat(root.as_fd())?;
    let magic = sys::fstatfs(root.as_fd())?.magic;
    let fstype = read_mount_entry(root_stat.mount_id)?.map(|entry| entry.fstype);
    let resolver: Box<dyn ObjectResolver> =
        match resolver_kind(scheme, magic, fstype.as_deref(), dir)? {
            ResolverKind::Kernel => Box::new(KernelResolver::new(&root, dir)?),
            ResolverKind::GlusterfsGfid => Box::new(GfidResolver::new(&root, dir)?),
        };
    println!(
        "{dir}: {} ({}), {iterations} calls each",
        fstype.unwrap_or_default(),
        if resolver.scheme() == gateway::gfid::GFID_SCHEME {
            "GFID resolver"
        } else {
            "kernel resolver"
        }
    );
    let scratch_fd = sys::openat(
        None,
        &CString::new(scratch.as_os_str().as_encoded_bytes())?,
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    println!(
        "{:<10} {:>14} {:>14} {:>10}",
        "object", "object_id µs", "object_id_at µs", "open µs"
    );
    for name in ["file", "dir", "link"] {
        let name = CString::new(name)?;
        let fd: OwnedFd = sys::openat(
            Some(scratch_fd.as_fd()),
            &name,
            libc::O_PATH | libc::O_NOFOLLOW,
        )?;
        let id = resolver.object_id(fd.as_fd())?;
        if resolver.object_id_at(scratch_fd.as_fd(), &name)? != id {
            return Err(format!("{name:?}: object_id_at differs from object_id").into());
        }
        let opened = resolver.open(&id)?;
        if !sys::fstat(opened.as_fd())?.same_object(&sys::fstat(fd.as_fd())?) {
            return Err(format!("{name:?}: its id opens another object").into());
        }
        if resolver.object_id(opened.as_fd())? != id {
            return Err(format!("{name:?}: the opened object has another id").into());
        }
        let time = |call: &dyn Fn() -> std::io::Result<()>| -> std::io::Result<f64> {
            for _ in 0..iterations / 10 {
                call()?;
            }
            let start = Instant::now();
            for _ in 0..iterations {
                call()?;
            }
            Ok(start.elapsed().as_secs_f64() * 1e6 / f64::from(iterations))
        };
        let object_id = time(&|| resolver.object_id(fd.as_fd()).map(drop))?;
        let object_id_at = time(&|| resolver.object_id_at(scratch_fd.as_fd(), &name).map(drop))?;
        let open = time(&|| resolver.open(&id).map(drop))?;
        println!(
            "{:<10} {object_id:>14.1} {object_id_at:>14.1} {open:>10.1}",
            name.to_string_lossy()
        );
    }
    cold(&*resolver, scratch)
}

/// Each of `COLD` fresh files and directories once (as a READDIRPLUS of a new directory and
/// the first use of each handle would), then each directory a second time.
fn cold(
    resolver: &dyn ObjectResolver,
    scratch: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error>> {
    const COLD: u32 = 300;
    let many = scratch.join("many");
    std::fs::create_dir(&many)?;
    for index in 0..COLD {
        std::fs::write(many.join(format!("f{index}")), b"")?;
        std::fs::create_dir(many.join(format!("d{index}")))?;
        std::fs::write(many.join(format!("s{index}")), b"")?;
    }
    let many_fd = sys::openat(
        None,
        &CString::new(many.as_os_str().as_encoded_bytes())?,
        libc::O_PATH | libc::O_DIRECTORY,
    )?;
    let mut ids = Vec::new();
    let mut row = |label: &str, prefix: &str| -> Result<(), Box<dyn std::error::Error>> {
        let start = Instant::now();
        for index in 0..COLD {
            let name = CString::new(format!("{prefix}{index}"))?;
            ids.push(resolver.object_id_at(many_fd.as_fd(), &name)?);
        }
        let per_call = start.elapsed().as_secs_f64() * 1e6 / f64::from(COLD);
        println!("{label:<28} {per_call:>10.1} µs");
        Ok(())
    };
    println!("first use of {COLD} new objects each:");
    // The reference: what looking a new name up costs any resolver (the statx every
    // READDIRPLUS entry and LOOKUP makes anyway).
    let start = Instant::now();
    for index in 0..COLD {
        sys::statx(many_fd.as_fd(), &CString::new(format!("s{index}"))?)?;
    }
    let per_call = start.elapsed().as_secs_f64() * 1e6 / f64::from(COLD);
    println!("{:<28} {per_call:>10.1} µs", "statx (reference), files");
    row("object_id_at, files", "f")?;
    row("object_id_at, directories", "d")?;
    let directories = &ids[COLD as usize..];
    for label in [
        "open, files",
        "open, directories",
        "open, directories again",
    ] {
        let ids = if label == "open, files" {
            &ids[..COLD as usize]
        } else {
            directories
        };
        let start = Instant::now();
        for id in ids {
            resolver.open(id)?;
        }
        let per_call = start.elapsed().as_secs_f64() * 1e6 / f64::from(COLD);
        println!("{label:<28} {per_call:>10.1} µs");
    }
    Ok(())
}
