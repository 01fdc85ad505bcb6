//! The READDIRPLUS listing cache (`gateway::listing_cache`) against a real gateway serving a
//! directory on the machine's disk (ext4 here; a local file system, so the cache is on), with
//! changes made directly on the volume, as another program or another node's gateway on the
//! same kernel would make them. Every listing is compared with what `lstat` says of every entry
//! right after it; the cache's counters say which listings it answered. Needs root (the gateway
//! opens files by handle, and fanotify's filesystem marks need `CAP_SYS_ADMIN`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::{Attr, Entry, Nfs, TestServer, root};
use gateway::listing_cache::Counters;

/// What a listing entry's attributes must equal: the entry's `lstat`, read after the listing.
/// (`used` is left out: ext4 may move a file's block count when writeback allocates.)
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    fileid: u64,
    mode: u32,
    nlink: u32,
    uid: u32,
    gid: u32,
    size: u64,
    atime: (u32, u32),
    mtime: (u32, u32),
    ctime: (u32, u32),
}

fn seen(attr: &Attr) -> Seen {
    Seen {
        fileid: attr.fileid,
        mode: attr.mode,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        size: attr.size,
        atime: attr.atime,
        mtime: attr.mtime,
        ctime: attr.ctime,
    }
}

fn lstat(path: &Path) -> Seen {
    let meta = std::fs::symlink_metadata(path).unwrap();
    let time = |seconds: i64, nanoseconds: i64| (seconds as u32, nanoseconds as u32);
    Seen {
        fileid: meta.ino(),
        mode: meta.mode() & 0o7777,
        nlink: meta.nlink() as u32,
        uid: meta.uid(),
        gid: meta.gid(),
        size: meta.size(),
        atime: time(meta.atime(), meta.atime_nsec()),
        mtime: time(meta.mtime(), meta.mtime_nsec()),
        ctime: time(meta.ctime(), meta.ctime_nsec()),
    }
}

/// Checks a listing of `dir` against the file system: the same names, and every entry but
/// `.` and `..` with the attributes `lstat` gives now.
fn check(what: &str, dir: &Path, listing: &[Entry]) {
    let mut expected: Vec<Vec<u8>> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_encoded_bytes())
        .collect();
    expected.extend([b".".to_vec(), b"..".to_vec()]);
    expected.sort();
    let mut names: Vec<Vec<u8>> = listing.iter().map(|entry| entry.name.clone()).collect();
    names.sort();
    assert_eq!(names, expected, "{what}: names");
    // `.` and `..` are never cached, and listing a directory may move its own access time.
    for entry in listing
        .iter()
        .filter(|entry| entry.name != b".." && entry.name != b".")
    {
        let path = dir.join(std::ffi::OsStr::from_bytes(&entry.name));
        let attr = entry.attr.as_ref().unwrap_or_else(|| {
            panic!("{what}: {:?} has no attributes", entry.name);
        });
        assert_eq!(seen(attr), lstat(&path), "{what}: {:?}", path);
        assert!(entry.handle.is_some(), "{what}: {:?} has no handle", path);
    }
}

fn counters(server: &TestServer) -> Counters {
    server
        .service
        .listing_cache()
        .expect("the listing cache is on for a local file system")
        .counters()
}

/// A directory of `files` regular files, a subdirectory, a hard-linked pair, a symbolic link
/// and a FIFO, in the export `data` of a new server.
fn directory(files: usize) -> (tempfile::TempDir, TestServer, PathBuf) {
    let (volume, server) = common::data_server();
    let dir = common::make_dir(volume.path().join("data/d"));
    for index in 0..files {
        std::fs::write(dir.join(format!("file-{index:04}")), vec![b'x'; index % 97]).unwrap();
    }
    common::make_dir(dir.join("sub"));
    std::fs::write(dir.join("linked"), b"two names").unwrap();
    std::fs::hard_link(dir.join("linked"), dir.join("linked-too")).unwrap();
    std::os::unix::fs::symlink("file-0001", dir.join("symlink")).unwrap();
    let fifo = std::ffi::CString::new(dir.join("fifo").into_os_string().into_encoded_bytes());
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.unwrap().as_ptr(), 0o644) }, 0);
    (volume, server, dir)
}

fn dir_handle(nfs: &mut Nfs) -> Vec<u8> {
    let root_fh = nfs.mnt("/data").unwrap();
    nfs.lookup(&root_fh, b"d").unwrap().0
}

/// Lists twice: the second listing must come from the cache (and equal the first).
fn list_twice(what: &str, server: &TestServer, nfs: &mut Nfs, fh: &[u8], dir: &Path) {
    let first = nfs.readdir_all(fh, 8192, true);
    check(what, dir, &first);
    let before = counters(server);
    let second = nfs.readdir_all(fh, 8192, true);
    let after = counters(server);
    assert!(
        after.hits > before.hits,
        "{what}: a repeated listing is cached"
    );
    assert_eq!(
        after.misses, before.misses,
        "{what}: every reply came from a run"
    );
    assert_eq!(
        after.stored, before.stored,
        "{what}: nothing was listed again"
    );
    assert!(after.cached_entries > 0, "{what}: runs hold attributes");
    assert_same(what, &first, &second);
}

/// Asserts that two listings are the same but for the access times of `.` and `..` (listing
/// a directory may move its own), naming the first entry that differs.
fn assert_same(what: &str, first: &[Entry], second: &[Entry]) {
    assert_eq!(first.len(), second.len(), "{what}: entries");
    for (a, b) in first.iter().zip(second) {
        let mut b = b.clone();
        if b.name == b"." || b.name == b".." {
            if let (Some(attr), Some(a)) = (b.attr.as_mut(), a.attr.as_ref()) {
                attr.atime = a.atime;
            }
        }
        assert!(*a == b, "{what}: {:?} differs: {a:?} against {b:?}", a.name);
    }
}

fn set_times(path: &Path, atime: Option<SystemTime>, mtime: Option<SystemTime>) {
    let file = std::fs::File::options().write(true).open(path).unwrap();
    let mut times = std::fs::FileTimes::new();
    if let Some(atime) = atime {
        times = times.set_accessed(atime);
    }
    if let Some(mtime) = mtime {
        times = times.set_modified(mtime);
    }
    file.set_times(times).unwrap();
}

#[test]
fn every_local_change_is_seen_by_the_next_listing() {
    if !common::root_or_skip("every_local_change_is_seen_by_the_next_listing") {
        return;
    }
    let (volume, server, dir) = directory(300);
    let other = common::make_dir(volume.path().join("data/other"));
    let mut nfs = server.nfs(root());
    let fh = dir_handle(&mut nfs);
    let file = |index: usize| dir.join(format!("file-{index:04}"));
    let year_ago = SystemTime::now() - Duration::from_secs(365 * 86400);
    type Change<'a> = Box<dyn Fn() + 'a>;
    let changes: Vec<(&str, Change<'_>)> = vec![
        (
            "a write",
            Box::new(|| std::fs::write(file(3), b"longer than before, surely").unwrap()),
        ),
        (
            "a truncation",
            Box::new(|| {
                let f = std::fs::File::options().write(true).open(file(50)).unwrap();
                f.set_len(1).unwrap();
            }),
        ),
        (
            "a chmod",
            Box::new(|| {
                std::fs::set_permissions(file(7), PermissionsExt::from_mode(0o600)).unwrap();
            }),
        ),
        (
            "a chown",
            Box::new(|| std::os::unix::fs::chown(file(8), Some(1000), Some(1000)).unwrap()),
        ),
        (
            "new times",
            Box::new(|| set_times(&file(9), Some(year_ago), Some(year_ago))),
        ),
        (
            "an extended attribute (ctime)",
            Box::new(|| {
                let path =
                    std::ffi::CString::new(file(10).into_os_string().into_encoded_bytes()).unwrap();
                // SAFETY: setxattr with NUL-terminated strings and a valid buffer.
                let result = unsafe {
                    libc::setxattr(
                        path.as_ptr(),
                        c"user.test".as_ptr(),
                        b"1".as_ptr().cast(),
                        1,
                        0,
                    )
                };
                assert_eq!(result, 0, "{}", std::io::Error::last_os_error());
            }),
        ),
        (
            "a read that moves the access time",
            // The access time was set a year back by "new times": relatime updates it now.
            Box::new(|| drop(std::fs::read(file(9)).unwrap())),
        ),
        (
            "a second name in another directory",
            Box::new(|| std::fs::hard_link(file(11), other.join("eleven")).unwrap()),
        ),
        (
            "a change through the other name",
            Box::new(|| std::fs::write(other.join("eleven"), b"changed elsewhere").unwrap()),
        ),
        (
            "the other name removed",
            Box::new(|| std::fs::remove_file(other.join("eleven")).unwrap()),
        ),
        (
            "a change through a hard link's other name",
            Box::new(|| std::fs::write(dir.join("linked-too"), b"one changed, both").unwrap()),
        ),
        (
            "a rename within",
            Box::new(|| std::fs::rename(file(12), dir.join("renamed")).unwrap()),
        ),
        (
            "a rename out",
            Box::new(|| std::fs::rename(file(13), other.join("moved")).unwrap()),
        ),
        (
            "a rename in over an entry",
            Box::new(|| std::fs::rename(other.join("moved"), file(14)).unwrap()),
        ),
        (
            "a file created",
            Box::new(|| std::fs::write(dir.join("new"), b"new").unwrap()),
        ),
        (
            "a file removed",
            Box::new(|| std::fs::remove_file(file(15)).unwrap()),
        ),
        (
            "an entry made in the subdirectory",
            Box::new(|| std::fs::write(dir.join("sub/inside"), b"").unwrap()),
        ),
        (
            "a path through the symbolic link (its access time)",
            Box::new(|| drop(std::fs::read_link(dir.join("symlink")).unwrap())),
        ),
        (
            "the symbolic link replaced",
            Box::new(|| {
                std::fs::remove_file(dir.join("symlink")).unwrap();
                std::os::unix::fs::symlink("a longer target than before", dir.join("symlink"))
                    .unwrap();
            }),
        ),
        (
            "the directory's own mode",
            Box::new(|| {
                std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o750)).unwrap();
            }),
        ),
    ];
    let root_fh = nfs.mnt("/data").unwrap();
    let other_fh = nfs.lookup(&root_fh, b"other").unwrap().0;
    for (what, change) in changes {
        // Both directories cached: a file with names in both is in both listings.
        list_twice(what, &server, &mut nfs, &fh, &dir);
        list_twice(what, &server, &mut nfs, &other_fh, &other);
        change();
        check(what, &dir, &nfs.readdir_all(&fh, 8192, true));
        check(what, &other, &nfs.readdir_all(&other_fh, 8192, true));
    }
    let counters = counters(&server);
    assert!(counters.dropped > 0, "{counters:?}");
}

/// A directory moved elsewhere has a new `..`: its cached runs must not keep the old one.
#[test]
fn a_moved_directory_lists_its_new_parent() {
    if !common::root_or_skip("a_moved_directory_lists_its_new_parent") {
        return;
    }
    let (volume, server, dir) = directory(10);
    let other = common::make_dir(volume.path().join("data/other"));
    std::fs::write(dir.join("sub/inside"), b"x").unwrap();
    let mut nfs = server.nfs(root());
    let d = dir_handle(&mut nfs);
    let sub = nfs.lookup(&d, b"sub").unwrap().0;
    list_twice("sub, before", &server, &mut nfs, &sub, &dir.join("sub"));
    std::fs::rename(dir.join("sub"), other.join("sub")).unwrap();
    let listing = nfs.readdir_all(&sub, 8192, true);
    check("sub, moved", &other.join("sub"), &listing);
    let parent = listing.iter().find(|entry| entry.name == b"..").unwrap();
    assert_eq!(
        parent.fileid,
        lstat(&other).fileid,
        "`..` is the new parent"
    );
    assert_eq!(parent.attr.unwrap().fileid, lstat(&other).fileid);
}

/// Appends `data` to `path` with Linux native AIO (`io_submit`), for which the kernel raises no
/// fanotify event.
fn aio_append(path: &Path, data: &[u8]) {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let offset = file.metadata().unwrap().len();
    let mut context: libc::c_ulong = 0;
    // SAFETY: io_setup writes the context id through the pointer.
    let made = unsafe { libc::syscall(libc::SYS_io_setup, 1, &mut context) };
    assert_eq!(made, 0);
    // SAFETY: iocb is plain data; zero is a valid start.
    let mut iocb: libc::iocb = unsafe { std::mem::zeroed() };
    iocb.aio_lio_opcode = 1; // IOCB_CMD_PWRITE
    iocb.aio_fildes = file.as_raw_fd() as u32;
    iocb.aio_buf = data.as_ptr() as u64;
    iocb.aio_nbytes = data.len() as u64;
    iocb.aio_offset = offset as i64;
    let mut submitted = [&mut iocb as *mut libc::iocb];
    // SAFETY: one valid iocb, whose buffer outlives the call's completion below.
    let count = unsafe { libc::syscall(libc::SYS_io_submit, context, 1, submitted.as_mut_ptr()) };
    assert_eq!(count, 1, "{}", std::io::Error::last_os_error());
    // struct io_event: data, obj, res, res2.
    let mut event = [0u64; 4];
    // SAFETY: room for one io_event; no timeout.
    let done = unsafe {
        libc::syscall(
            libc::SYS_io_getevents,
            context,
            1,
            1,
            event.as_mut_ptr(),
            std::ptr::null::<libc::timespec>(),
        )
    };
    assert_eq!(done, 1);
    assert_eq!(event[2], data.len() as u64, "the AIO write's result");
    // SAFETY: the context made above, with nothing in flight.
    unsafe { libc::syscall(libc::SYS_io_destroy, context) };
}

/// What the kernel reports no event for (native AIO writes here) shows in a listing once the
/// cached run has lived out its lifetime, and not later.
#[test]
fn changes_without_events_show_within_a_run_s_lifetime() {
    if !common::root_or_skip("changes_without_events_show_within_a_run_s_lifetime") {
        return;
    }
    let (_volume, server, dir) = directory(20);
    let mut nfs = server.nfs(root());
    let fh = dir_handle(&mut nfs);
    list_twice("before", &server, &mut nfs, &fh, &dir);
    let file = dir.join("file-0005");
    let written = std::time::Instant::now();
    aio_append(&file, &[b'a'; 8192]);
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(gateway::listing_cache::RUN_LIFETIME < Duration::from_secs(2));
    let deadline = written + Duration::from_secs(3);
    loop {
        let listing = nfs.readdir_all(&fh, 8192, true);
        let entry = listing
            .iter()
            .find(|entry| entry.name == b"file-0005")
            .unwrap();
        if entry.attr.unwrap().size == size {
            check("after the AIO write", &dir, &listing);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the AIO write never showed in the listing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Two clients list while a program changes the files' sizes and modes. A fill that raced with
/// a change must not be stored: the change's event is read before the fill is stored, while
/// the file is not yet in any run, so only the fill's ticket catches it. Without entries
/// created or deleted, nothing else would ever drop such a run.
#[test]
fn listings_stay_coherent_while_files_change_under_them() {
    if !common::root_or_skip("listings_stay_coherent_while_files_change_under_them") {
        return;
    }
    let (_volume, server, dir) = directory(200);
    let mut nfs = server.nfs(root());
    let fh = dir_handle(&mut nfs);
    for round in 0..4 {
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut n = 0usize;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let path = dir.join(format!("file-{:04}", (n * 37) % 200));
                    if n % 2 == 0 {
                        std::fs::write(&path, vec![b'y'; n % 300]).unwrap();
                    } else {
                        let mode = 0o600 + (n as u32 % 0o100);
                        std::fs::set_permissions(&path, PermissionsExt::from_mode(mode)).unwrap();
                    }
                    n += 1;
                }
            });
            let listers: Vec<_> = (0..2)
                .map(|_| {
                    let (server, fh) = (&server, &fh);
                    scope.spawn(move || {
                        let mut nfs = server.nfs(root());
                        let deadline = Instant::now() + Duration::from_millis(1500);
                        while Instant::now() < deadline {
                            let listing = nfs.readdir_all(fh, 8192, true);
                            assert_eq!(listing.len(), 200 + 7);
                        }
                    })
                })
                .collect();
            for lister in listers {
                lister.join().unwrap();
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        // The writer has stopped: whatever the cache stored meanwhile must be current now.
        let what = format!("after churn round {round}");
        let listing = nfs.readdir_all(&fh, 8192, true);
        check(&what, &dir, &listing);
        list_twice(&what, &server, &mut nfs, &fh, &dir);
    }
    let counters = counters(&server);
    assert!(
        counters.refused > 0,
        "no fill raced with a change: {counters:?}"
    );
}

#[test]
fn runs_serve_other_reply_sizes_correctly() {
    if !common::root_or_skip("runs_serve_other_reply_sizes_correctly") {
        return;
    }
    let (_volume, server, dir) = directory(400);
    let mut nfs = server.nfs(root());
    let fh = dir_handle(&mut nfs);
    list_twice("8 KiB replies", &server, &mut nfs, &fh, &dir);
    let reference = nfs.readdir_all(&fh, 8192, true);
    for count in [4096, 8192, 16384, 65536, 2048, 8192] {
        let listing = nfs.readdir_all(&fh, count, true);
        check(&format!("{count}-byte replies"), &dir, &listing);
        let names = |listing: &[Entry]| -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
            listing
                .iter()
                .map(|entry| (entry.name.clone(), entry.handle.clone()))
                .collect()
        };
        assert_eq!(names(&listing), names(&reference), "{count}: handles");
    }
}

#[test]
fn a_caller_who_may_not_search_the_directory_gets_no_cached_attributes() {
    if !common::root_or_skip("a_caller_who_may_not_search_the_directory_gets_no_cached_attributes")
    {
        return;
    }
    let (_volume, server, dir) = directory(20);
    let mut nfs = server.nfs(root());
    let fh = dir_handle(&mut nfs);
    // Readable by others, but not searchable.
    std::fs::set_permissions(&dir, PermissionsExt::from_mode(0o744)).unwrap();
    list_twice("as root", &server, &mut nfs, &fh, &dir);
    let mut stranger = server.nfs(common::auth_sys(1000, 1000, &[]));
    let listing = stranger.readdir_all(&fh, 8192, true);
    assert_eq!(listing.len(), 20 + 7);
    for entry in listing
        .iter()
        .filter(|entry| entry.name != b"." && entry.name != b"..")
    {
        assert!(entry.attr.is_none(), "{:?}: attributes leaked", entry.name);
        assert!(entry.handle.is_none(), "{:?}: handle leaked", entry.name);
    }
}
