//! NFSv3, MOUNT and portmap over the wire against a real gateway serving a temporary directory
//! on loopback: every procedure and its error codes, permissions as different users, escape
//! attempts, handle continuity between two gateways on the same volume, pipelining, and
//! RPC-level rejections. Needs root (the gateway opens files by handle and switches
//! credentials).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use cluster_config::{Access, ClientMatch, Squash};
use common::{Args, Outcome, TestExport, TestServer, auth_sys, root, status, volume};
use gateway::rpc::{
    AcceptStatus, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth, PORTMAP_PROGRAM, ReplyBody,
};
use gateway::xdr::Decoder;

const UNSTABLE: u32 = 0;
const FILE_SYNC: u32 = 2;

#[test]
fn portmap_and_rpcbind_point_at_the_nfs_port() {
    if !common::root_or_skip("portmap_and_rpcbind_point_at_the_nfs_port") {
        return;
    }
    let (_volume, server) = common::data_server();
    let port = u32::from(server.address.port());
    let mut rpc = server.client();
    assert_eq!(common::getport(&mut rpc, NFS_PROGRAM, 3, 6), port);
    assert_eq!(common::getport(&mut rpc, MOUNT_PROGRAM, 3, 6), port);
    assert_eq!(
        common::getport(&mut rpc, NFS_PROGRAM, 4, 6),
        0,
        "no NFSv4 yet"
    );
    assert_eq!(common::getport(&mut rpc, NFS_PROGRAM, 3, 17), 0, "no UDP");

    // rpcbind v4 GETADDR answers with the address the query arrived on.
    let args = Args::new()
        .u32(NFS_PROGRAM)
        .u32(3)
        .opaque(b"tcp")
        .opaque(b"")
        .opaque(b"");
    let Outcome::Results(results) = rpc.call(PORTMAP_PROGRAM, 4, 3, &Credential::None, &args.0)
    else {
        panic!("GETADDR rejected");
    };
    let address = Decoder::new(&results).string(256).unwrap().to_owned();
    assert_eq!(address, format!("127.0.0.1.{}.{}", port >> 8, port & 0xff));

    // DUMP lists portmap, MOUNT and NFS.
    let Outcome::Results(results) = rpc.call(PORTMAP_PROGRAM, 2, 4, &Credential::None, &[]) else {
        panic!("DUMP rejected");
    };
    let decoder = &mut Decoder::new(&results);
    let mut programs = BTreeSet::new();
    while decoder.bool().unwrap() {
        let program = decoder.u32().unwrap();
        let _version = decoder.u32().unwrap();
        let _protocol = decoder.u32().unwrap();
        let _port = decoder.u32().unwrap();
        programs.insert(program);
    }
    assert_eq!(
        programs,
        BTreeSet::from([PORTMAP_PROGRAM, NFS_PROGRAM, MOUNT_PROGRAM])
    );
}

#[test]
fn mount_applies_paths_client_lists_and_containment() {
    if !common::root_or_skip("mount_applies_paths_client_lists_and_containment") {
        return;
    }
    let volume = volume();
    common::make_dir(volume.path().join("data/sub"));
    common::make_dir(volume.path().join("other"));
    std::os::unix::fs::symlink("../../other", volume.path().join("data/out")).unwrap();
    let mut closed = TestExport::rw("closed", "other", Squash::Root);
    closed.clients = vec![ClientMatch::Network("192.0.2.0/24".parse().unwrap())];
    let server = TestServer::start(
        volume.path(),
        &[TestExport::rw("data", "data", Squash::Root), closed],
    );
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    assert!(root_fh.len() <= 64);
    assert_eq!(nfs.mnt("/data/").unwrap(), root_fh);
    let local = volume.path().join("data");
    assert_eq!(
        nfs.mnt(local.to_str().unwrap()).unwrap(),
        root_fh,
        "node path"
    );
    let sub = nfs.mnt("/data/sub").unwrap();
    assert_eq!(nfs.lookup(&root_fh, b"sub").unwrap().0, sub);
    assert_eq!(nfs.mnt("/nothing"), Err(2), "MNT3ERR_NOENT");
    assert_eq!(nfs.mnt("/data/missing"), Err(2));
    assert_eq!(nfs.mnt("/data/../other"), Err(13), "no .. out of an export");
    assert_eq!(nfs.mnt("/data/out"), Err(13), "no symlink out of an export");
    assert_eq!(
        nfs.mnt("/closed"),
        Err(13),
        "127.0.0.1 is not in 192.0.2.0/24"
    );

    // A handle for the closed export (forged from another client's MNT) is refused too: the
    // client list applies to every call, not only to MNT.
    let other_server = TestServer::start(
        volume.path(),
        &[TestExport::rw("closed", "other", Squash::Root)],
    );
    let closed_fh = other_server.nfs(root()).mnt("/closed").unwrap();
    assert_eq!(nfs.getattr(&closed_fh), Err(status::ACCES));

    // EXPORT lists both exports with their client lists, as showmount -e prints them.
    let Outcome::Results(results) = nfs.rpc.call(MOUNT_PROGRAM, 3, 5, &Credential::None, &[])
    else {
        panic!("EXPORT rejected");
    };
    let decoder = &mut Decoder::new(&results);
    let mut exports = BTreeMap::new();
    while decoder.bool().unwrap() {
        let path = decoder.string(1024).unwrap().to_owned();
        let mut groups = Vec::new();
        while decoder.bool().unwrap() {
            groups.push(decoder.string(255).unwrap().to_owned());
        }
        exports.insert(path, groups);
    }
    assert_eq!(exports["/data"], vec!["*"]);
    assert_eq!(exports["/closed"], vec!["192.0.2.0/24"]);

    // DUMP shows our mount; UMNT removes it.
    let dump = |nfs: &mut common::Nfs| {
        let Outcome::Results(results) = nfs.rpc.call(MOUNT_PROGRAM, 3, 2, &Credential::None, &[])
        else {
            panic!("DUMP rejected");
        };
        let decoder = &mut Decoder::new(&results);
        let mut mounts = Vec::new();
        while decoder.bool().unwrap() {
            let host = decoder.string(255).unwrap().to_owned();
            let path = decoder.string(1024).unwrap().to_owned();
            mounts.push((host, path));
        }
        mounts
    };
    assert!(dump(&mut nfs).contains(&("testclient".to_owned(), "/data/sub".to_owned())));
    let args = Args::new().opaque(b"/data/sub");
    assert!(matches!(
        nfs.rpc.call(MOUNT_PROGRAM, 3, 3, &root(), &args.0),
        Outcome::Results(_)
    ));
    assert!(!dump(&mut nfs).contains(&("testclient".to_owned(), "/data/sub".to_owned())));
}

#[test]
fn files_directories_and_links_through_every_procedure() {
    if !common::root_or_skip("files_directories_and_links_through_every_procedure") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    let root_attr = nfs.getattr(&root_fh).unwrap();
    assert_eq!(root_attr.kind, 2, "NF3DIR");
    let on_disk = std::fs::metadata(volume.path().join("data")).unwrap();
    assert_eq!(root_attr.fileid, on_disk.ino());

    // CREATE (guarded), WRITE, READ, GETATTR.
    let (file, attr) = nfs.create(&root_fh, b"hello.txt", 1, 0o640).unwrap();
    assert_eq!((attr.kind, attr.mode, attr.size), (1, 0o640, 0));
    assert_eq!(attr.fsid, root_attr.fsid, "one fsid per export");
    assert_eq!(
        nfs.create(&root_fh, b"hello.txt", 1, 0o640),
        Err(status::EXIST)
    );
    // The mode is applied as sent: the client has applied its umask already.
    assert_eq!(
        nfs.create(&root_fh, b"open", 1, 0o666).unwrap().1.mode,
        0o666
    );
    assert_eq!(
        nfs.mkdir(&root_fh, b"open-dir", 0o777).unwrap().1.mode,
        0o777
    );
    // UNCHECKED over an existing file succeeds and returns the same file.
    assert_eq!(
        nfs.create(&root_fh, b"hello.txt", 0, 0o600).unwrap().0,
        file
    );
    let written = nfs.write(&file, 0, b"hello, world", FILE_SYNC).unwrap();
    assert_eq!((written.count, written.committed), (12, FILE_SYNC));
    assert_eq!(
        nfs.read(&file, 0, 100).unwrap(),
        (b"hello, world".to_vec(), true)
    );
    assert_eq!(nfs.read(&file, 7, 3).unwrap(), (b"wor".to_vec(), false));
    assert_eq!(nfs.read(&file, 100, 10).unwrap(), (Vec::new(), true));
    // An offset beyond what lseek/pread take is still just past the end.
    assert_eq!(nfs.read(&file, u64::MAX, 10).unwrap(), (Vec::new(), true));
    assert_eq!(
        std::fs::read(volume.path().join("data/hello.txt")).unwrap(),
        b"hello, world"
    );
    assert_eq!(nfs.read(&root_fh, 0, 10), Err(status::ISDIR));

    // LOOKUP finds it; NOENT and NAMETOOLONG.
    let (found, found_attr) = nfs.lookup(&root_fh, b"hello.txt").unwrap();
    assert_eq!(found, file);
    assert_eq!(found_attr.size, 12);
    assert_eq!(nfs.lookup(&root_fh, b"missing"), Err(status::NOENT));
    assert_eq!(nfs.lookup(&root_fh, &[b'x'; 256]), Err(status::NAMETOOLONG));
    assert_eq!(
        nfs.create(&root_fh, &[b'x'; 256], 1, 0o644),
        Err(status::NAMETOOLONG)
    );
    assert_eq!(nfs.lookup(&file, b"x"), Err(status::NOTDIR));

    // SETATTR: mode, size, guarded ctime.
    assert_eq!(nfs.chmod(&file, 0o600).unwrap().mode, 0o600);
    assert_eq!(nfs.truncate(&file, 5).unwrap().size, 5);
    let current = nfs.getattr(&file).unwrap();
    let stale_guard = Args::new().sattr_mode(0o644).u32(1).u32(1).u32(2);
    assert_eq!(nfs.setattr_raw(&file, stale_guard), Err(status::NOT_SYNC));
    let guard = Args::new()
        .sattr_mode(0o644)
        .u32(1)
        .u32(current.ctime.0)
        .u32(current.ctime.1);
    assert_eq!(nfs.setattr_raw(&file, guard).unwrap().mode, 0o644);

    // MKDIR, nested CREATE, RMDIR of a non-empty directory, RENAME over an existing target.
    let (dir, dir_attr) = nfs.mkdir(&root_fh, b"dir", 0o755).unwrap();
    assert_eq!((dir_attr.kind, dir_attr.mode), (2, 0o755));
    assert_eq!(nfs.mkdir(&root_fh, b"dir", 0o755), Err(status::EXIST));
    nfs.create(&dir, b"inner", 1, 0o644).unwrap();
    assert_eq!(nfs.rmdir(&root_fh, b"dir"), Err(status::NOTEMPTY));
    nfs.create(&root_fh, b"target", 1, 0o644).unwrap();
    nfs.rename(&dir, b"inner", &root_fh, b"target").unwrap();
    assert_eq!(nfs.lookup(&dir, b"inner"), Err(status::NOENT));
    assert_eq!(
        nfs.rename(&dir, b"inner", &root_fh, b"x"),
        Err(status::NOENT)
    );
    nfs.rmdir(&root_fh, b"dir").unwrap();
    assert_eq!(nfs.rmdir(&root_fh, b"dir"), Err(status::NOENT));
    assert_eq!(
        nfs.getattr(&dir),
        Err(status::STALE),
        "handle of a removed directory"
    );

    // LINK, REMOVE.
    let linked = nfs.link(&file, &root_fh, b"hard").unwrap();
    assert_eq!(linked.nlink, 2);
    assert_eq!(nfs.link(&file, &root_fh, b"hard"), Err(status::EXIST));
    nfs.remove(&root_fh, b"hard").unwrap();
    assert_eq!(nfs.getattr(&file).unwrap().nlink, 1);
    assert_eq!(nfs.remove(&root_fh, b"hard"), Err(status::NOENT));
    assert_eq!(nfs.remove(&root_fh, b"."), Err(status::INVAL));

    // SYMLINK, READLINK; MKNOD of a FIFO and a socket, not of a device.
    let (link, link_attr) = nfs.symlink(&root_fh, b"link", b"hello.txt").unwrap();
    assert_eq!(link_attr.kind, 5);
    assert_eq!(nfs.readlink(&link).unwrap(), b"hello.txt");
    assert_eq!(nfs.readlink(&file), Err(status::INVAL));
    assert_eq!(nfs.mknod(&root_fh, b"fifo", 7).unwrap().1.kind, 7);
    assert_eq!(nfs.mknod(&root_fh, b"socket", 6).unwrap().1.kind, 6);
    assert_eq!(nfs.mknod(&root_fh, b"device", 4), Err(status::BADTYPE));
    assert_eq!(nfs.mknod(&root_fh, b"regular", 1), Err(status::BADTYPE));

    // ACCESS, FSSTAT, FSINFO, PATHCONF.
    assert_eq!(nfs.access(&file, 0x3f).unwrap(), 0x01 | 0x04 | 0x08);
    assert_eq!(nfs.access(&root_fh, 0x1f).unwrap(), 0x1f);
    let [total, free, available, files, _, _] = nfs.fsstat(&root_fh).unwrap();
    assert!(total > 0 && free <= total && available <= free && files > 0);
    let (rtmax, wtmax, maxfilesize, properties) = nfs.fsinfo(&root_fh).unwrap();
    assert_eq!((rtmax, wtmax), (1 << 20, 1 << 20));
    assert!(maxfilesize > 1 << 40);
    assert_eq!(properties & 0x1b, 0x1b);
    let (linkmax, name_max) = nfs.pathconf(&root_fh).unwrap();
    assert!(linkmax >= 1000);
    assert_eq!(name_max, 255);
}

#[test]
fn unstable_writes_commit_with_the_incarnation_verifier() {
    if !common::root_or_skip("unstable_writes_commit_with_the_incarnation_verifier") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    let (file, _) = nfs.create(&root_fh, b"big", 1, 0o644).unwrap();
    let chunk = vec![0xa5u8; 1 << 20];
    let first = nfs.write(&file, 0, &chunk, UNSTABLE).unwrap();
    assert_eq!((first.count, first.committed), (1 << 20, UNSTABLE));
    assert_eq!(first.verifier, server.service.write_verifier());
    // Past 4 GiB: offsets and sizes are 64-bit all the way.
    let far = 5 << 30;
    let second = nfs.write(&file, far, b"tail", UNSTABLE).unwrap();
    assert_eq!(second.verifier, first.verifier);
    assert_eq!(nfs.commit(&file).unwrap(), first.verifier);
    assert_eq!(nfs.getattr(&file).unwrap().size, far + 4);
    assert_eq!(nfs.read(&file, far, 10).unwrap(), (b"tail".to_vec(), true));
    let (data, eof) = nfs.read(&file, 0, 1 << 20).unwrap();
    assert!(data == chunk && !eof);
    // A READ larger than rtmax is cut to rtmax.
    assert_eq!(nfs.read(&file, 0, 4 << 20).unwrap().0.len(), 1 << 20);

    // Another gateway on the same volume (the node a VIP moves to) resolves the same handle and
    // reports a different write verifier, so the client re-sends what it had not committed.
    let other = TestServer::start(
        volume.path(),
        &[TestExport::rw("data", "data", Squash::None)],
    );
    let mut moved = other.nfs(root());
    assert_eq!(moved.getattr(&file).unwrap().size, far + 4);
    let after_move = moved.write(&file, 0, b"again", UNSTABLE).unwrap();
    assert_ne!(after_move.verifier, first.verifier);
    assert_eq!(moved.commit(&file).unwrap(), after_move.verifier);
}

#[test]
fn exclusive_create_recognises_its_retransmission() {
    if !common::root_or_skip("exclusive_create_recognises_its_retransmission") {
        return;
    }
    let (_volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    let verifier = *b"\x12\x34\x56\x78\x9a\xbc\xde\xf0";
    let (first, _) = nfs.create_exclusive(&root_fh, b"excl", verifier).unwrap();
    let (again, _) = nfs.create_exclusive(&root_fh, b"excl", verifier).unwrap();
    assert_eq!(again, first, "the retransmission gets the same file");
    assert_eq!(
        nfs.create_exclusive(&root_fh, b"excl", *b"otherone"),
        Err(status::EXIST)
    );
    // The client then sets the real attributes.
    assert_eq!(nfs.chmod(&first, 0o640).unwrap().mode, 0o640);
}

#[test]
fn callers_act_as_themselves_and_root_is_squashed() {
    if !common::root_or_skip("callers_act_as_themselves_and_root_is_squashed") {
        return;
    }
    let volume = volume();
    let data = common::make_dir(volume.path().join("data"));
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::write(data.join("secret"), b"root only").unwrap();
    std::fs::set_permissions(data.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = TestServer::start(
        volume.path(),
        &[
            TestExport::rw("data", "data", Squash::Root),
            TestExport::rw("open", "data", Squash::None),
            TestExport {
                access: Access::ReadOnly,
                ..TestExport::rw("ro", "data", Squash::None)
            },
        ],
    );
    let mut user = server.nfs(auth_sys(1000, 1000, &[1000]));
    let root_fh = user.mnt("/data").unwrap();
    let (secret, attr) = user.lookup(&root_fh, b"secret").unwrap();
    assert_eq!((attr.uid, attr.mode), (0, 0o600));
    assert_eq!(
        user.read(&secret, 0, 10),
        Err(status::ACCES),
        "uid 1000 reads root's 0600 file"
    );
    assert_eq!(user.access(&secret, 0x01).unwrap(), 0, "ACCESS agrees");
    assert_eq!(user.write(&secret, 0, b"x", FILE_SYNC), Err(status::ACCES));
    assert_eq!(user.chmod(&secret, 0o666), Err(status::PERM));

    // What uid 1000 creates belongs to uid 1000, and its owner may write it whatever the mode
    // (the NFS owner override that lets `cp` create a 0444 file and then fill it).
    let (mine, attr) = user.create(&root_fh, b"mine", 1, 0o444).unwrap();
    assert_eq!((attr.uid, attr.gid, attr.mode), (1000, 1000, 0o444));
    assert_eq!(user.write(&mine, 0, b"data", FILE_SYNC).unwrap().count, 4);
    let on_disk = std::fs::metadata(data.join("mine")).unwrap();
    assert_eq!((on_disk.uid(), on_disk.gid()), (1000, 1000));

    // Another user may not write it, nor remove it from the sticky directory.
    let mut other = server.nfs(auth_sys(1001, 1001, &[]));
    assert_eq!(other.write(&mine, 0, b"x", FILE_SYNC), Err(status::ACCES));
    assert_eq!(other.remove(&root_fh, b"mine"), Err(status::PERM));

    // Root is squashed to 65534 on this export: it cannot read the secret or chown.
    let mut squashed = server.nfs(root());
    assert_eq!(squashed.read(&secret, 0, 10), Err(status::ACCES));
    assert_eq!(squashed.chown(&mine, 0, 0), Err(status::PERM));
    let (created, attr) = squashed.create(&root_fh, b"by-root", 1, 0o644).unwrap();
    assert_eq!((attr.uid, attr.gid), (65534, 65534));
    assert!(!created.is_empty());

    // On the export without squash, root is root.
    let mut real_root = server.nfs(root());
    let open_fh = real_root.mnt("/open").unwrap();
    let (secret_open, _) = real_root.lookup(&open_fh, b"secret").unwrap();
    assert_eq!(
        real_root.read(&secret_open, 0, 100).unwrap().0,
        b"root only"
    );
    assert_eq!(real_root.chown(&secret_open, 1000, 1000).unwrap().uid, 1000);

    // A read-only export refuses every modification with ROFS, whoever asks.
    let ro_fh = real_root.mnt("/ro").unwrap();
    let (ro_secret, _) = real_root.lookup(&ro_fh, b"secret").unwrap();
    assert_eq!(
        real_root.write(&ro_secret, 0, b"x", FILE_SYNC),
        Err(status::ROFS)
    );
    assert_eq!(
        real_root.create(&ro_fh, b"new", 1, 0o644),
        Err(status::ROFS)
    );
    assert_eq!(real_root.remove(&ro_fh, b"secret"), Err(status::ROFS));
    assert_eq!(real_root.chmod(&ro_secret, 0o600), Err(status::ROFS));
    assert_eq!(
        real_root.access(&ro_fh, 0x1f).unwrap() & 0x1c,
        0,
        "no MODIFY/EXTEND/DELETE"
    );
    assert!(real_root.read(&ro_secret, 0, 4).is_ok());
    // The same directory through different exports is different file systems to a client.
    assert_ne!(
        real_root.getattr(&ro_fh).unwrap().fsid,
        real_root.getattr(&open_fh).unwrap().fsid
    );
    // Cross-export LINK and RENAME are refused.
    assert_eq!(
        real_root.link(&secret_open, &root_fh, b"x"),
        Err(status::XDEV)
    );
}

#[test]
fn nothing_escapes_the_export() {
    if !common::root_or_skip("nothing_escapes_the_export") {
        return;
    }
    let volume = volume();
    let data = common::make_dir(volume.path().join("data"));
    common::make_dir(volume.path().join("outside"));
    std::fs::write(volume.path().join("outside/file"), b"outside").unwrap();
    std::os::unix::fs::symlink("/etc", data.join("etc")).unwrap();
    std::os::unix::fs::symlink("../outside", data.join("up")).unwrap();
    let server = TestServer::start(
        volume.path(),
        &[TestExport::rw("data", "data", Squash::None)],
    );
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    let root_attr = nfs.getattr(&root_fh).unwrap();

    // `..` of the root is the root.
    let (parent, parent_attr) = nfs.lookup(&root_fh, b"..").unwrap();
    assert_eq!(parent, root_fh);
    assert_eq!(parent_attr.fileid, root_attr.fileid);
    let (dot, _) = nfs.lookup(&root_fh, b".").unwrap();
    assert_eq!(dot, root_fh);
    // Names with a slash are not paths.
    assert_eq!(nfs.lookup(&root_fh, b"../outside"), Err(status::INVAL));
    assert_eq!(nfs.lookup(&root_fh, b"etc/passwd"), Err(status::INVAL));
    // A symbolic link pointing out is returned as the link; the server never follows it.
    let (etc, etc_attr) = nfs.lookup(&root_fh, b"etc").unwrap();
    assert_eq!(etc_attr.kind, 5);
    assert_eq!(nfs.readlink(&etc).unwrap(), b"/etc");
    assert_eq!(nfs.read(&etc, 0, 100), Err(status::INVAL));
    assert_eq!(nfs.lookup(&etc, b"passwd"), Err(status::NOTDIR));
    let (up, _) = nfs.lookup(&root_fh, b"up").unwrap();
    assert_eq!(nfs.readdir_once(&up, 0, 4096, false), Err(status::NOTDIR));
    // `..` listed in the root names the root.
    let entries = nfs.readdir_all(&root_fh, 4096, true);
    let dotdot = entries.iter().find(|entry| entry.name == b"..").unwrap();
    assert_eq!(dotdot.fileid, root_attr.fileid);
    assert_eq!(dotdot.handle.as_deref(), Some(&root_fh[..]));

    // Forged handles: every edit of a real one is refused.
    let (link, _) = nfs.lookup(&root_fh, b"etc").unwrap();
    for index in 0..link.len() {
        let mut forged = link.clone();
        forged[index] ^= 0x40;
        let outcome = nfs.getattr(&forged);
        assert!(
            matches!(outcome, Err(status::STALE | status::BADHANDLE)),
            "byte {index}: {outcome:?}"
        );
    }
    assert_eq!(nfs.getattr(&[]), Err(status::BADHANDLE));
    assert_eq!(
        nfs.getattr(&[1; 20]),
        Err(status::STALE),
        "well-formed, not ours"
    );
    // The handle another cluster (another secret) issued for a file outside this export.
    let outside = TestServer::start_with(
        volume.path(),
        &[TestExport::rw("data", "outside", Squash::None)],
        b"another cluster's secret",
        gateway::Limits::default(),
    );
    let mut stranger = outside.nfs(root());
    let outside_root = stranger.mnt("/data").unwrap();
    let (outside_file, _) = stranger.lookup(&outside_root, b"file").unwrap();
    assert_eq!(nfs.getattr(&outside_file), Err(status::STALE));
    assert_eq!(nfs.read(&outside_file, 0, 10), Err(status::STALE));
    // A handle over 64 bytes does not even decode.
    let long = Args::new().opaque(&[0; 65]);
    assert_eq!(
        nfs.rpc.call(NFS_PROGRAM, 3, 1, &root(), &long.0),
        Outcome::Rejected(ReplyBody::accepted(AcceptStatus::GarbageArgs))
    );
}

#[test]
fn readdir_cookies_resume_on_another_node() {
    if !common::root_or_skip("readdir_cookies_resume_on_another_node") {
        return;
    }
    let volume = volume();
    let data = common::make_dir(volume.path().join("data"));
    let mut expected = BTreeSet::from([b".".to_vec(), b"..".to_vec()]);
    for index in 0..300 {
        let name = format!("file-{index:04}-with-a-longer-name");
        std::fs::write(data.join(&name), b"").unwrap();
        expected.insert(name.into_bytes());
    }
    let exports = [TestExport::rw("data", "data", Squash::None)];
    let node_a = TestServer::start(volume.path(), &exports);
    let node_b = TestServer::start(volume.path(), &exports);
    let mut a = node_a.nfs(root());
    let mut b = node_b.nfs(root());
    let root_fh = a.mnt("/data").unwrap();

    // One listing in small pieces, alternating nodes: every name exactly once.
    let mut names = Vec::new();
    let mut cookie = 0;
    for call in 0.. {
        let client = if call % 2 == 0 { &mut a } else { &mut b };
        let (entries, eof) = client
            .readdir_once(&root_fh, cookie, 1024, call % 3 == 0)
            .unwrap();
        assert!(!entries.is_empty() || eof);
        cookie = entries.last().map_or(cookie, |entry| entry.cookie);
        names.extend(entries.into_iter().map(|entry| entry.name));
        if eof {
            break;
        }
    }
    assert_eq!(
        names.len(),
        expected.len(),
        "no duplicates, nothing missing"
    );
    assert_eq!(names.into_iter().collect::<BTreeSet<_>>(), expected);

    // READDIRPLUS hands out handles that work, with attributes.
    let entries = b.readdir_all(&root_fh, 64 * 1024, true);
    let entry = entries
        .iter()
        .find(|entry| entry.name == b"file-0007-with-a-longer-name")
        .unwrap();
    let attr = a.getattr(entry.handle.as_ref().unwrap()).unwrap();
    assert_eq!(Some(attr), entry.attr);
    assert_eq!(attr.fileid, entry.fileid);
    // A count too small for one entry is TOOSMALL.
    assert_eq!(
        a.readdir_once(&root_fh, 0, 100, true),
        Err(status::TOOSMALL)
    );
}

/// Waits until the clock the handle cache reads has moved past the birth of every file of
/// `dir`: on a local file system (the tests' volumes are), the cache admits them from then on.
fn wait_until_clock_passed(dir: &std::path::Path) {
    let newest = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().created().unwrap())
        .max()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let passed = || {
        let now = gateway::sys::coarse_realtime();
        std::time::Duration::new(now.seconds.try_into().unwrap(), now.nanoseconds) > newest
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !passed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the coarse clock never passed {newest:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Changes `dir`'s entries and back, so that the next listing is read afresh (not answered
/// from the listing cache) and consults the handle cache.
fn drop_listings(dir: &std::path::Path) {
    std::fs::create_dir(dir.join("nudge")).unwrap();
    std::fs::remove_dir(dir.join("nudge")).unwrap();
}

/// `(name, handle)` of every READDIRPLUS entry but `.` and `..`.
fn listed_handles(nfs: &mut common::Nfs, dir: &[u8]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    nfs.readdir_all(dir, 64 * 1024, true)
        .into_iter()
        .filter(|entry| entry.name != b"." && entry.name != b"..")
        .map(|entry| (entry.name, entry.handle.unwrap()))
        .collect()
}

#[test]
fn cached_handles_are_the_uncached_ones_and_follow_inodes() {
    if !common::root_or_skip("cached_handles_are_the_uncached_ones_and_follow_inodes") {
        return;
    }
    let volume = volume();
    let data = common::make_dir(volume.path().join("data"));
    for index in 0..40 {
        std::fs::write(data.join(format!("old-{index:02}")), b"").unwrap();
    }
    let exports = [TestExport::rw("data", "data", Squash::None)];
    let node_a = TestServer::start(volume.path(), &exports);
    let mut a = node_a.nfs(root());
    let root_fh = a.mnt("/data").unwrap();

    // Right after they were made, files may or may not be cached yet (the unit tests check
    // the admission rule); the handles are the same either way.
    let fresh = listed_handles(&mut a, &root_fh);
    assert_eq!(fresh.len(), 40);
    a.lookup(&root_fh, b"old-00").unwrap();

    wait_until_clock_passed(&data);
    drop_listings(&data);
    // Once the kernel's timestamp clock has passed their birth (this is a local file system,
    // which only this machine's clock stamps), the next listing fills the cache and the one
    // after is served from it; both give the bytes the uncached path gave, and so does a node
    // that has never seen these files (DESIGN.md invariant 3).
    let filling = listed_handles(&mut a, &root_fh);
    assert_eq!(node_a.service.handle_cache().len(), 40);
    let cached = listed_handles(&mut a, &root_fh);
    assert_eq!(filling, fresh);
    assert_eq!(cached, fresh);
    let node_b = TestServer::start(volume.path(), &exports);
    let mut b = node_b.nfs(root());
    for (name, handle) in &cached {
        let (looked_up, attr) = b.lookup(&root_fh, name).unwrap();
        assert_eq!(&looked_up, handle);
        // LOOKUP through A's cache, too.
        assert_eq!(&a.lookup(&root_fh, name).unwrap().0, handle);
        // Attributes are never cached: they change at once on every node.
        assert_eq!(a.getattr(handle).unwrap(), attr);
    }
    std::fs::write(data.join("old-00"), b"grown").unwrap();
    let entries = a.readdir_all(&root_fh, 64 * 1024, true);
    let grown = entries
        .iter()
        .find(|entry| entry.name == b"old-00")
        .unwrap();
    assert_eq!(grown.attr.unwrap().size, 5);

    // A rename keeps the object and so its handle; the cache, keyed by inode, agrees.
    std::fs::rename(data.join("old-01"), data.join("renamed")).unwrap();
    let after_rename = listed_handles(&mut a, &root_fh);
    assert_eq!(after_rename[&b"renamed"[..]], cached[&b"old-01"[..]]);

    // Replace files by new ones, which may well reuse the inode numbers (ext4 does): the new
    // incarnations get their own handles, the ones an uncached node computes, and the old
    // handles are stale rather than naming the new files.
    for index in 2..20 {
        std::fs::remove_file(data.join(format!("old-{index:02}"))).unwrap();
    }
    for index in 2..20 {
        std::fs::write(data.join(format!("old-{index:02}")), b"new").unwrap();
    }
    for settled in [false, true] {
        if settled {
            wait_until_clock_passed(&data);
        }
        let replaced = listed_handles(&mut a, &root_fh);
        let node_c = TestServer::start(volume.path(), &exports);
        let mut c = node_c.nfs(root());
        for index in 2..20 {
            let name = format!("old-{index:02}");
            let handle = &replaced[name.as_bytes()];
            assert_ne!(
                handle,
                &cached[name.as_bytes()],
                "{name} kept its old handle"
            );
            assert_eq!(&c.lookup(&root_fh, name.as_bytes()).unwrap().0, handle);
            assert_eq!(a.getattr(handle).unwrap().size, 3);
            assert_eq!(
                a.getattr(&cached[name.as_bytes()]),
                Err(status::STALE),
                "the old handle of {name} must be stale"
            );
        }
    }
}

/// A file listed (and, every other round, certainly cached) is deleted and made again under the
/// same name, on a local file system that reuses inode numbers at once (ext4): the next listing
/// must hand out the new file's handle, never the cached one of its predecessor, and the old
/// handle must be stale.
#[test]
fn a_file_made_again_is_never_listed_with_its_predecessor_s_handle() {
    if !common::root_or_skip("a_file_made_again_is_never_listed_with_its_predecessor_s_handle") {
        return;
    }
    let volume = volume();
    let data = common::make_dir(volume.path().join("data"));
    let exports = [TestExport::rw("data", "data", Squash::None)];
    let server = TestServer::start(volume.path(), &exports);
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    let path = data.join("again");
    let inode =
        |path: &std::path::Path| std::os::unix::fs::MetadataExt::ino(&path.metadata().unwrap());
    std::fs::write(&path, b"0").unwrap();
    // The cache's size when the file of the round was made: it grows once that file is cached.
    let mut cached_at_birth = server.service.handle_cache().len();
    let (mut reused, mut cached_rounds) = (0, 0);
    for round in 1..=200u32 {
        let old_inode = inode(&path);
        if round % 2 == 0 {
            wait_until_clock_passed(&data);
            drop_listings(&data);
        }
        let old_handle = listed_handles(&mut nfs, &root_fh)[&b"again"[..]].clone();
        let cached = server.service.handle_cache().len() > cached_at_birth;
        assert!(cached || round % 2 == 1, "round {round}: not cached");
        cached_rounds += usize::from(cached);

        std::fs::remove_file(&path).unwrap();
        let content = round.to_string();
        std::fs::write(&path, &content).unwrap();
        cached_at_birth = server.service.handle_cache().len();
        reused += usize::from(inode(&path) == old_inode);
        let handle = listed_handles(&mut nfs, &root_fh)[&b"again"[..]].clone();
        assert_ne!(
            handle, old_handle,
            "round {round}: the predecessor's handle"
        );
        assert_eq!(
            nfs.getattr(&handle).unwrap().size,
            content.len() as u64,
            "round {round}"
        );
        assert_eq!(
            nfs.getattr(&old_handle),
            Err(status::STALE),
            "round {round}"
        );
    }
    eprintln!("200 rounds: {reused} reused the inode number, {cached_rounds} had it cached");
}

/// This process's connection threads now (servers name them `nfs-conn`).
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim_end() == "nfs-conn")
        .count()
}

/// Every connection has a thread of its own: a hundred clients at once are all served, and
/// their threads end with their connections (no thread, descriptor or slot left behind).
#[test]
fn many_connections_each_get_a_thread_and_give_it_back() {
    if !common::root_or_skip("many_connections_each_get_a_thread_and_give_it_back") {
        return;
    }
    let (_volume, server) = common::data_server();
    let root_fh = server.nfs(root()).mnt("/data").unwrap();
    let before = threads();
    let mut clients: Vec<_> = (0..100).map(|_| server.nfs(root())).collect();
    for client in &mut clients {
        client.getattr(&root_fh).unwrap();
    }
    // (The MNT client's connection thread may have ended since `before`.)
    assert!(threads() >= before + 95, "a thread per connection");
    drop(clients);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Other tests of this binary may run servers meanwhile: allow for a few of their clients.
    while threads() > before + 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "connection threads outlived their connections: {} threads, {before} before",
            threads()
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(gateway::server::connection_panics(), 0);
}

/// Stops `server` (cancels and joins it) and fails unless that ends within `seconds`.
fn stop_within(server: TestServer, seconds: u64, when: &str) {
    let stopping = std::thread::spawn(move || drop(server));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !stopping.is_finished() {
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not stop {when}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stopping.join().unwrap();
}

/// A client that sends calls but never reads the replies fills its connection's slots; the
/// connection's thread then waits for a slot. A shutdown must still end it (within the drain
/// deadline) and let the server return.
#[test]
fn shutdown_ends_a_connection_waiting_for_slots() {
    if !common::root_or_skip("shutdown_ends_a_connection_waiting_for_slots") {
        return;
    }
    let (volume, server) = common::data_server();
    std::fs::write(volume.path().join("data/big"), vec![7u8; 1 << 20]).unwrap();
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    let (big, _) = nfs.lookup(&root_fh, b"big").unwrap();
    let mut silent = server.client();
    let read = Args::new().opaque(&big).u64(0).u32(1 << 20).0;
    for _ in 0..64 {
        silent.send(NFS_PROGRAM, 3, 6, &root(), &read);
    }
    // The replies back up: every slot of the connection holds a spliced READ reply that the
    // socket does not take (their pipes stay lent), and the connection's thread waits for one.
    let slots = gateway::Limits::default().requests_per_connection;
    let backed_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.service.pipe_stats().lent < slots {
        assert!(
            std::time::Instant::now() < backed_up,
            "the replies never backed up"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    stop_within(server, 20, "while a connection waited for a slot");
    drop(silent);
}

/// Which calls the connection's thread may run itself: metadata calls on a local file system
/// (this export is on the machine's disk), not the data calls, not calls of other programs or
/// of unknown exports, not arguments that do not start with a handle.
#[test]
fn only_quick_calls_run_on_the_connection_thread() {
    if !common::root_or_skip("only_quick_calls_run_on_the_connection_thread") {
        return;
    }
    let (_volume, server) = common::data_server();
    let root_fh = server.nfs(root()).mnt("/data").unwrap();
    let call = |program: u32, procedure: u32| gateway::rpc::Call {
        xid: 1,
        program,
        version: 3,
        procedure,
        credential: root(),
        verifier: OpaqueAuth::none(),
    };
    let with_handle = |handle: &[u8]| Args::new().opaque(handle).u64(0).u32(4096).0;
    let mut other_export = root_fh.clone();
    other_export[2] ^= 0xff;
    let cases: &[(&str, u32, u32, Vec<u8>, bool)] = &[
        ("NULL", NFS_PROGRAM, 0, Vec::new(), true),
        ("GETATTR", NFS_PROGRAM, 1, with_handle(&root_fh), true),
        ("LOOKUP", NFS_PROGRAM, 3, with_handle(&root_fh), true),
        ("CREATE", NFS_PROGRAM, 8, with_handle(&root_fh), true),
        ("READDIRPLUS", NFS_PROGRAM, 17, with_handle(&root_fh), true),
        ("READ", NFS_PROGRAM, 6, with_handle(&root_fh), false),
        ("WRITE", NFS_PROGRAM, 7, with_handle(&root_fh), false),
        ("COMMIT", NFS_PROGRAM, 21, with_handle(&root_fh), false),
        (
            "another export",
            NFS_PROGRAM,
            1,
            with_handle(&other_export),
            false,
        ),
        ("no handle", NFS_PROGRAM, 1, vec![0, 0, 0], false),
        ("MOUNT", MOUNT_PROGRAM, 1, with_handle(&root_fh), false),
    ];
    for (what, program, procedure, args, quick) in cases {
        assert_eq!(
            server
                .service
                .runs_quickly(&call(*program, *procedure), args),
            *quick,
            "{what}"
        );
    }
}

/// Each connection is served by a thread of its own that waits for the client's bytes: a
/// shutdown must wake the threads of idle connections (their clients send nothing), close
/// the connections and let the server return.
#[test]
fn shutdown_ends_idle_connections() {
    if !common::root_or_skip("shutdown_ends_idle_connections") {
        return;
    }
    let (_volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    nfs.getattr(&root_fh).unwrap();
    let idle: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(server.address).unwrap())
        .collect();
    stop_within(server, 10, "with idle connections open");
    assert_eq!(gateway::server::connection_panics(), 0);
    for mut stream in idle {
        let mut byte = [0u8; 1];
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let read = std::io::Read::read(&mut stream, &mut byte);
        assert!(
            matches!(read, Ok(0))
                || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle connection was left open"
        );
    }
}

#[test]
fn many_calls_in_flight_on_one_connection() {
    if !common::root_or_skip("many_calls_in_flight_on_one_connection") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    for index in 0..20 {
        std::fs::write(
            volume.path().join(format!("data/f{index}")),
            format!("content {index}"),
        )
        .unwrap();
    }
    let handles: Vec<Vec<u8>> = (0..20)
        .map(|index| {
            nfs.lookup(&root_fh, format!("f{index}").as_bytes())
                .unwrap()
                .0
        })
        .collect();
    // 200 READs sent back to back before reading any reply: every one answered, matched by
    // xid, with the right data.
    let mut expected = BTreeMap::new();
    for round in 0..10 {
        for (index, handle) in handles.iter().enumerate() {
            let args = Args::new().opaque(handle).u64(0).u32(100);
            let xid = nfs.rpc.send(NFS_PROGRAM, 3, 6, &root(), &args.0);
            expected.insert(xid, (round, index));
        }
    }
    for _ in 0..expected.len() {
        let (xid, outcome) = nfs.rpc.receive();
        let (_, index) = expected.remove(&xid).expect("a reply for each call, once");
        let Outcome::Results(results) = outcome else {
            panic!("rejected");
        };
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0);
        common::post_op_attr(decoder);
        decoder.u32().unwrap();
        decoder.bool().unwrap();
        assert_eq!(
            decoder.opaque(100).unwrap(),
            format!("content {index}").as_bytes()
        );
    }
    assert!(expected.is_empty());
}

#[test]
fn large_replies_in_flight_arrive_whole_and_in_one_piece_each() {
    if !common::root_or_skip("large_replies_in_flight_arrive_whole_and_in_one_piece_each") {
        return;
    }
    let (volume, server) = common::data_server();
    let mut nfs = server.nfs(root());
    let root_fh = nfs.mnt("/data").unwrap();
    // Two files of 1 MiB with different patterns, read whole 40 times each, every call sent
    // before any reply is read: the socket fills up, replies are written in parts by worker
    // threads and the flusher, gathered several to a write, and every record must still come
    // out whole, uninterleaved and matched to its call.
    let contents: Vec<Vec<u8>> = (0..2u8)
        .map(|file| {
            (0..1024 * 1024)
                .map(|index: u32| (index % 251) as u8 ^ file)
                .collect()
        })
        .collect();
    let handles: Vec<Vec<u8>> = contents
        .iter()
        .enumerate()
        .map(|(file, content)| {
            let name = format!("big{file}");
            std::fs::write(volume.path().join("data").join(&name), content).unwrap();
            nfs.lookup(&root_fh, name.as_bytes()).unwrap().0
        })
        .collect();
    let mut expected = BTreeMap::new();
    for round in 0..40 {
        let file = round % 2;
        let args = Args::new().opaque(&handles[file]).u64(0).u32(1024 * 1024);
        let xid = nfs.rpc.send(NFS_PROGRAM, 3, 6, &root(), &args.0);
        expected.insert(xid, file);
    }
    while !expected.is_empty() {
        let (xid, outcome) = nfs.rpc.receive();
        let file = expected.remove(&xid).expect("a reply for each call, once");
        let Outcome::Results(results) = outcome else {
            panic!("rejected");
        };
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0);
        common::post_op_attr(decoder);
        assert_eq!(decoder.u32().unwrap(), 1024 * 1024);
        assert!(decoder.bool().unwrap(), "eof");
        assert!(decoder.opaque(1024 * 1024).unwrap() == contents[file].as_slice());
    }
}

#[test]
fn rpc_level_errors() {
    if !common::root_or_skip("rpc_level_errors") {
        return;
    }
    let (_volume, server) = common::data_server();
    let mut rpc = server.client();
    let cases: Vec<(u32, u32, u32, Vec<u8>, ReplyBody)> = vec![
        (
            NFS_PROGRAM,
            4,
            0,
            vec![],
            ReplyBody::accepted(AcceptStatus::ProgMismatch { low: 3, high: 3 }),
        ),
        (
            NFS_PROGRAM,
            3,
            22,
            vec![],
            ReplyBody::accepted(AcceptStatus::ProcUnavail),
        ),
        (
            NFS_PROGRAM,
            3,
            1,
            vec![0, 0, 0],
            ReplyBody::accepted(AcceptStatus::GarbageArgs),
        ),
        (
            100_021,
            4,
            0,
            vec![],
            ReplyBody::accepted(AcceptStatus::ProgUnavail),
        ),
        (
            PORTMAP_PROGRAM,
            2,
            5,
            vec![],
            ReplyBody::accepted(AcceptStatus::ProcUnavail),
        ),
    ];
    for (program, version, procedure, args, expected) in cases {
        assert_eq!(
            rpc.call(program, version, procedure, &Credential::None, &args),
            Outcome::Rejected(expected),
            "{program} v{version} proc {procedure}"
        );
    }
    // NULL works with AUTH_NONE and the connection survives all of the above.
    assert_eq!(
        rpc.call(NFS_PROGRAM, 3, 0, &Credential::None, &[]),
        Outcome::Results(Vec::new())
    );
    // AUTH_NONE callers are anonymous: they may look but act as nobody.
    let mut anonymous = server.nfs(Credential::None);
    let root_fh = anonymous.mnt("/data").unwrap();
    assert_eq!(
        anonymous.create(&root_fh, b"x", 1, 0o644),
        Err(status::ACCES)
    );
}

#[test]
fn startup_names_what_cannot_be_served() {
    if !common::root_or_skip("startup_names_what_cannot_be_served") {
        return;
    }
    let start = |path: &str| {
        gateway::Service::new(
            vec![gateway::ExportSpec {
                name: "bad".to_owned(),
                mount_path: "/bad".to_owned(),
                local_path: path.into(),
                policy: gateway::export::Policy {
                    access: Access::ReadOnly,
                    clients: vec![ClientMatch::Any],
                    squash: Squash::Root,
                    anon_uid: 65534,
                    anon_gid: 65534,
                },
            }],
            gateway::ServiceOptions {
                ports: gateway::Ports {
                    nfs: 2049,
                    portmap: 111,
                    udp: false,
                },
                handle_key: gateway::handle::HandleKey::from_cluster_secret(common::SECRET),
                write_verifier: None,
                host_names: std::sync::Arc::new(common::NoNames),
                handles: cluster_config::HandleScheme::Auto,
            },
        )
        .map(drop)
        .map_err(|error| {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(&error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        })
    };
    // procfs has no file handles: the error names the export, the path and the file system.
    let error = start("/proc/self").unwrap_err();
    assert!(
        error.contains("export bad") && error.contains("/proc/self") && error.contains("proc"),
        "{error}"
    );
    assert!(error.contains("cannot produce file handles"), "{error}");
    let error = start("/nonexistent/export").unwrap_err();
    assert!(
        error.contains("/nonexistent/export") && error.contains("No such file"),
        "{error}"
    );
}
