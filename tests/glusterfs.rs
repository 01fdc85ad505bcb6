//! NFS on a real replicated GlusterFS volume: three nodes run glusterd and mount one
//! `replica 3` volume with `aux-gfid-mount` (`common::gluster`), every node runs `vipgate node`
//! with the volume on that FUSE mount (`volume.handles: auto`, which picks the GFID resolver),
//! and a client namespace talks to a VIP. libnfs's `nfs-cp`/`nfs-ls`/`nfs-cat` work; handles
//! obtained through the VIP's first owner keep working after the VIP moves to another node (no
//! ESTALE): a file written through the first owner reads back through the second, a file
//! and a directory renamed afterwards keep their handles, a directory handle lists and leads
//! back to its parent, a client may look up a file it may not read,
//! and a file renamed out of the (subdirectory) export still resolves by the handle issued
//! before, as a kernel handle would (`gateway::gfid`'s module documentation). A second test
//! checks the startup errors on a mount without `aux-gfid-mount`. Needs root and
//! glusterfs-server (`tests/run` installs it).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{VIPGATE, all_hosted, first_v4, holders, logs, owner_of, vipgate};
use common::gluster::{self, Gluster};
use common::{client, describe};
use gateway::record::{RecordDecoder, encode_record};
use gateway::rpc::{
    AuthSys, Call, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth, decode_reply,
};
use gateway::xdr::{Decoder, Encoder};
use vipgate::lab::{cluster, netns};

/// Whether this test can run: root, and GlusterFS installed (under CI both are required).
fn can_run(test: &str) -> bool {
    if !common::root_or_skip(test) {
        return false;
    }
    if gluster::installed() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs glusterfs-server, and CI must install it (tests/run does)"
    );
    eprintln!("SKIPPED {test}: glusterfs-server is not installed");
    false
}

/// A minimal NFSv3 client: one call at a time on one connection, AUTH_SYS root (squashed to
/// the export's anonymous user).
struct Rpc {
    stream: TcpStream,
    xid: u32,
}

impl Rpc {
    fn connect(address: SocketAddr) -> Rpc {
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Rpc { stream, xid: 1 }
    }

    /// Calls and returns the results of an accepted reply.
    fn call(&mut self, program: u32, procedure: u32, args: &[u8]) -> Vec<u8> {
        self.xid += 1;
        let mut message = Vec::new();
        Call {
            xid: self.xid,
            program,
            version: 3,
            procedure,
            credential: Credential::Sys(AuthSys {
                stamp: 0,
                machinename: b"client1".to_vec(),
                uid: 0,
                gid: 0,
                gids: vec![],
            }),
            verifier: OpaqueAuth::none(),
        }
        .encode(&mut Encoder::new(&mut message))
        .unwrap();
        message.extend_from_slice(args);
        let mut framed = Vec::new();
        encode_record(&message, 1 << 20, &mut framed);
        self.stream.write_all(&framed).unwrap();
        let mut decoder = RecordDecoder::new(2 << 20);
        let mut buffer = vec![0u8; 65536];
        loop {
            let length = self.stream.read(&mut buffer).unwrap();
            assert!(length > 0, "connection closed");
            if let Some(record) = decoder.decode(&mut &buffer[..length]).unwrap() {
                let (header, offset) = decode_reply(&record).unwrap();
                assert_eq!(header.xid, self.xid);
                return record[offset..].to_vec();
            }
        }
    }

    fn mount(&mut self, path: &str) -> Vec<u8> {
        let mut args = Vec::new();
        opaque(&mut Encoder::new(&mut args), path.as_bytes());
        let results = self.call(MOUNT_PROGRAM, 1, &args);
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0, "MNT {path}");
        decoder.opaque(64).unwrap().to_vec()
    }

    /// LOOKUP; the NFS status and, on success, the handle.
    fn lookup(&mut self, dir: &[u8], name: &str) -> (u32, Vec<u8>) {
        let results = self.call(NFS_PROGRAM, 3, &dir_op(dir, name));
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        let handle = if status == 0 {
            decoder.opaque(64).unwrap().to_vec()
        } else {
            Vec::new()
        };
        (status, handle)
    }

    /// GETATTR; the NFS status and, on success, (fileid, size).
    fn getattr(&mut self, handle: &[u8]) -> (u32, u64, u64) {
        let mut args = Vec::new();
        opaque(&mut Encoder::new(&mut args), handle);
        let results = self.call(NFS_PROGRAM, 1, &args);
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().unwrap();
        if status != 0 {
            return (status, 0, 0);
        }
        let (fileid, size) = fattr(decoder);
        (status, fileid, size)
    }

    fn read(&mut self, handle: &[u8]) -> Vec<u8> {
        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, handle);
        encoder.u64(0);
        encoder.u32(65536);
        let results = self.call(NFS_PROGRAM, 6, &args);
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0, "READ");
        skip_post_op_attr(decoder);
        decoder.u32().unwrap();
        decoder.bool().unwrap();
        decoder.opaque(65536).unwrap().to_vec()
    }

    /// CREATE (UNCHECKED, mode 0644) and a FILE_SYNC WRITE of `data`; the new file's handle.
    fn create_and_write(&mut self, dir: &[u8], name: &str, data: &[u8]) -> Vec<u8> {
        let mut args = dir_op(dir, name);
        let encoder = &mut Encoder::new(&mut args);
        encoder.u32(0); // UNCHECKED
        encoder.bool(true);
        encoder.u32(0o644);
        for _ in 0..3 {
            encoder.bool(false); // uid, gid, size
        }
        encoder.u32(0);
        encoder.u32(0); // atime, mtime: don't change
        let results = self.call(NFS_PROGRAM, 8, &args);
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0, "CREATE {name}");
        assert!(decoder.bool().unwrap(), "CREATE returns the handle");
        let handle = decoder.opaque(64).unwrap().to_vec();

        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, &handle);
        encoder.u64(0);
        encoder.u32(u32::try_from(data.len()).unwrap());
        encoder.u32(2); // FILE_SYNC
        opaque(encoder, data);
        let results = self.call(NFS_PROGRAM, 7, &args);
        assert_eq!(Decoder::new(&results).u32().unwrap(), 0, "WRITE {name}");
        handle
    }

    fn rename(&mut self, from_dir: &[u8], from: &str, to_dir: &[u8], to: &str) {
        let mut args = dir_op(from_dir, from);
        args.extend_from_slice(&dir_op(to_dir, to));
        let results = self.call(NFS_PROGRAM, 14, &args);
        assert_eq!(
            Decoder::new(&results).u32().unwrap(),
            0,
            "RENAME {from} {to}"
        );
    }

    /// READDIR from the start (one reply is enough for these small directories): the names.
    fn readdir(&mut self, dir: &[u8]) -> Vec<String> {
        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, dir);
        encoder.u64(0);
        encoder.fixed_opaque(&[0; 8]);
        encoder.u32(8192);
        let results = self.call(NFS_PROGRAM, 16, &args);
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0, "READDIR");
        skip_post_op_attr(decoder);
        decoder.fixed_opaque(8).unwrap();
        let mut names = Vec::new();
        while decoder.bool().unwrap() {
            decoder.u64().unwrap();
            names.push(String::from_utf8(decoder.opaque(255).unwrap().to_vec()).unwrap());
            decoder.u64().unwrap();
        }
        names
    }
}

fn opaque(encoder: &mut Encoder<'_>, bytes: &[u8]) {
    encoder.opaque(bytes, u32::MAX).unwrap();
}

fn dir_op(dir: &[u8], name: &str) -> Vec<u8> {
    let mut args = Vec::new();
    let encoder = &mut Encoder::new(&mut args);
    opaque(encoder, dir);
    opaque(encoder, name.as_bytes());
    args
}

/// Decodes a fattr3: (fileid, size).
fn fattr(decoder: &mut Decoder<'_>) -> (u64, u64) {
    for _ in 0..5 {
        decoder.u32().unwrap(); // type, mode, nlink, uid, gid
    }
    let size = decoder.u64().unwrap();
    decoder.u64().unwrap(); // used
    decoder.u64().unwrap(); // rdev
    decoder.u64().unwrap(); // fsid
    let fileid = decoder.u64().unwrap();
    decoder.fixed_opaque(24).unwrap(); // times
    (fileid, size)
}

fn skip_post_op_attr(decoder: &mut Decoder<'_>) {
    if decoder.bool().unwrap() {
        decoder.fixed_opaque(84).unwrap();
    }
}

/// Handles and content obtained through the VIP's first owner.
struct FromFirstOwner {
    export_root: Vec<u8>,
    written: Vec<u8>,
    to_rename: Vec<u8>,
    to_rename_fileid: u64,
    sub: Vec<u8>,
    leaving: Vec<u8>,
}

const WRITTEN: &[u8] = b"written through the first owner of the VIP";
const UPLOAD_LENGTH: u32 = 1_500_000;

#[test]
fn nfs_on_a_replicated_glusterfs_volume_across_a_vip_move() {
    if !can_run("nfs_on_a_replicated_glusterfs_volume_across_a_vip_move") {
        return;
    }
    let started = Instant::now();
    let lab = common::lab("gf", 3, 1);
    let gluster = Gluster::start(&lab);
    let volume_started = started.elapsed();

    // The export is a subdirectory of the volume, owned by the export's anonymous user; a
    // directory beside it is outside the export.
    let volume = gluster.mount_of("node1").to_path_buf();
    let export = volume.join(cluster::DEMO_EXPORT);
    let owner = Some(cluster::DEMO_EXPORT_OWNER);
    for dir in [export.clone(), export.join("sub"), volume.join("outside")] {
        std::fs::create_dir(&dir).unwrap();
        std::os::unix::fs::chown(&dir, owner, owner).unwrap();
    }
    std::fs::write(export.join("sub/inner"), b"inner").unwrap();
    // Root's, readable by root only: a client may look it up (its handle is read as the
    // daemon), though not read it.
    std::fs::write(export.join("private"), b"private").unwrap();
    std::fs::set_permissions(
        export.join("private"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(export.join("sub/leaving"), b"leaving").unwrap();

    lab.start_cluster(Path::new(VIPGATE)).unwrap();
    // Settled: every VIP hosted and every node holding one. Before that a node that becomes
    // healthy late takes VIPs from the others, and a copy under way would meet the move (its
    // CREATE sent again to the new owner answers EXIST).
    assert!(
        common::wait_until(Duration::from_secs(40), || all_hosted(&lab)
            && common::cluster::NODES
                .iter()
                .all(|node| !common::cluster::held_by(&lab, node).is_empty())),
        "the cluster never hosted every VIP balanced: {:?}\n{}",
        holders(&lab),
        logs(&lab)
    );
    let cluster_started = started.elapsed();
    let vip = first_v4();
    let first = owner_of(&lab, vip);

    // libnfs through the VIP: upload, list.
    let url = format!("nfs://{vip}/{}", cluster::DEMO_EXPORT);
    let local = lab.host_dir("client1").join("upload.bin");
    let content: Vec<u8> = (0..UPLOAD_LENGTH).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &content).unwrap();
    let remote = format!("{url}/upload.bin");
    let output = client(&lab, "nfs-cp", &[local.to_str().unwrap(), &remote]);
    assert!(
        output.status.success(),
        "nfs-cp: {}\n{}",
        describe(&output),
        logs(&lab)
    );
    let output = client(&lab, "nfs-ls", &[&url]);
    assert!(output.status.success(), "nfs-ls: {}", describe(&output));
    let listing = String::from_utf8_lossy(&output.stdout);
    assert!(
        listing.contains("upload.bin") && listing.contains("sub"),
        "{listing}"
    );
    // Replicated: another node's mount has the bytes.
    let elsewhere = gluster.mount_of(if first == "node3" { "node2" } else { "node3" });
    assert_eq!(
        std::fs::read(elsewhere.join("demo/upload.bin")).unwrap(),
        content,
        "the uploaded bytes on another node's mount"
    );

    // The protocol client through the first owner.
    let client_ns = lab.host("client1").unwrap().netns.clone();
    let nfs = SocketAddr::new(vip, 2049);
    let handles = netns::run_in(&client_ns, || {
        let mut rpc = Rpc::connect(nfs);
        let export_root = rpc.mount(&format!("/{}", cluster::DEMO_EXPORT));
        let written = rpc.create_and_write(&export_root, "written", WRITTEN);
        let (status, to_rename) = rpc.lookup(&export_root, "upload.bin");
        assert_eq!(status, 0, "LOOKUP upload.bin");
        let (_, to_rename_fileid, size) = rpc.getattr(&to_rename);
        assert_eq!(size, u64::from(UPLOAD_LENGTH));
        let (status, _) = rpc.lookup(&export_root, "private");
        assert_eq!(
            status, 0,
            "LOOKUP of a file the (squashed) caller may not read"
        );
        let (status, sub) = rpc.lookup(&export_root, "sub");
        assert_eq!(status, 0, "LOOKUP sub");
        let (status, leaving) = rpc.lookup(&sub, "leaving");
        assert_eq!(status, 0, "LOOKUP sub/leaving");
        FromFirstOwner {
            export_root,
            written,
            to_rename,
            to_rename_fileid,
            sub,
            leaving,
        }
    })
    .unwrap();
    // GFID handles: scheme 2, a 16-byte object id.
    assert_eq!(
        handles.written[1],
        gateway::gfid::GFID_SCHEME,
        "{:?}",
        handles.written
    );
    assert_eq!(handles.written.len(), 11 + 16 + 8);

    // The VIP moves to another node.
    let second = if first == "node1" { "node2" } else { "node1" };
    let (code, text) = vipgate(&lab, second, &["moveip", &vip.to_string(), second]);
    assert_eq!(code, 0, "moveip {vip} {second}: {text}");
    assert!(
        common::wait_until(Duration::from_secs(10), || holders(&lab)[&vip] == [second]),
        "{vip} never moved to {second}: {:?}",
        holders(&lab)
    );

    // A file is renamed out of the export on a third node's mount: the handle issued before
    // still resolves, as a kernel handle would (a handle names an object, not a path).
    let third = ["node1", "node2", "node3"]
        .into_iter()
        .find(|node| *node != first && *node != second)
        .unwrap();
    let third_mount = gluster.mount_of(third);
    std::fs::rename(
        third_mount.join("demo/sub/leaving"),
        third_mount.join("outside/leaving"),
    )
    .unwrap();

    let moved_at = Instant::now();
    netns::run_in(&client_ns, || {
        // The client reconnects to the same address, now served by the second node.
        let mut rpc = None;
        assert!(
            common::wait_until(Duration::from_secs(10), || {
                rpc = TcpStream::connect_timeout(&nfs, Duration::from_millis(300))
                    .is_ok()
                    .then(|| Rpc::connect(nfs));
                rpc.is_some()
            }),
            "no NFS on {nfs} after the move"
        );
        let mut rpc = rpc.unwrap();
        // Written through the first owner, read through the second with the same handle.
        assert_eq!(rpc.read(&handles.written), WRITTEN);
        // Renamed through the second: the handle still names the file.
        rpc.rename(
            &handles.export_root,
            "upload.bin",
            &handles.export_root,
            "renamed.bin",
        );
        let (status, fileid, size) = rpc.getattr(&handles.to_rename);
        assert_eq!(status, 0, "GETATTR of the renamed file's old handle");
        assert_eq!(fileid, handles.to_rename_fileid, "the same file");
        assert_eq!(size, u64::from(UPLOAD_LENGTH));
        let (status, again) = rpc.lookup(&handles.export_root, "renamed.bin");
        assert_eq!(status, 0, "LOOKUP renamed.bin");
        assert_eq!(again, handles.to_rename, "a renamed file keeps its handle");
        assert_eq!(rpc.read(&handles.to_rename)[..1000], content[..1000]);
        // A directory handle lists, looks up, and leads back to its parent.
        let mut names = rpc.readdir(&handles.sub);
        names.sort();
        assert_eq!(names, [".", "..", "inner"], "sub after `leaving` left");
        let (status, parent) = rpc.lookup(&handles.sub, "..");
        assert_eq!(status, 0, "LOOKUP sub/..");
        assert_eq!(
            parent, handles.export_root,
            "the parent of sub is the export root"
        );
        let (status, inner) = rpc.lookup(&handles.sub, "inner");
        assert_eq!(status, 0, "LOOKUP sub/inner");
        assert_eq!(rpc.read(&inner), b"inner");
        let mut names = rpc.readdir(&handles.export_root);
        names.sort();
        assert_eq!(
            names,
            [".", "..", "private", "renamed.bin", "sub", "written"]
        );
        // Renamed out of the export: still resolves by its old handle (documented behaviour,
        // the same as kernel handles'), but no name inside the export reaches it.
        assert_eq!(rpc.read(&handles.leaving), b"leaving");
        // (A node's FUSE mount may answer a name from its entry cache for GlusterFS's
        // entry-timeout, 1 s, after another node renamed it.)
        assert!(
            common::wait_until(Duration::from_secs(5), || rpc
                .lookup(&handles.sub, "leaving")
                .0
                == 2),
            "sub/leaving is still found after it left"
        );
        // A renamed directory keeps its handle too (the resolver remembered its old path).
        rpc.rename(&handles.export_root, "sub", &handles.export_root, "moved");
        assert_eq!(
            rpc.readdir(&handles.sub).len(),
            3,
            "READDIR of the renamed sub"
        );
        let (status, again) = rpc.lookup(&handles.export_root, "moved");
        assert_eq!(status, 0, "LOOKUP moved");
        assert_eq!(again, handles.sub, "a renamed directory keeps its handle");
        let (status, parent) = rpc.lookup(&handles.sub, "..");
        assert_eq!((status, parent), (0, handles.export_root.clone()));
        // The export root's parent is the export root: `..` never leaves the export.
        let (status, above) = rpc.lookup(&handles.export_root, "..");
        assert_eq!(status, 0);
        assert_eq!(above, handles.export_root);
    })
    .unwrap();
    let checked_after_move = moved_at.elapsed();

    // libnfs through the VIP on the second node.
    let output = client(&lab, "nfs-cat", &[&format!("{url}/renamed.bin")]);
    assert!(
        output.status.success(),
        "nfs-cat after the move: {}",
        describe(&output)
    );
    assert_eq!(output.stdout, content);

    eprintln!(
        "volume up in {volume_started:?}, cluster serving at {cluster_started:?}, \
         checks after the move took {checked_after_move:?}, total {:?}",
        started.elapsed()
    );
    drop(gluster);
    lab.teardown().unwrap();
}

/// No host names, for a service outside a lab.
#[derive(Debug)]
struct NoNames;

impl gateway::hostname::HostNames for NoNames {
    fn names(&self, _address: IpAddr) -> Vec<String> {
        Vec::new()
    }
}

fn service_on(path: &Path, handles: cluster_config::HandleScheme) -> Result<(), String> {
    let spec = gateway::ExportSpec {
        name: "demo".into(),
        mount_path: "/demo".into(),
        local_path: path.to_path_buf(),
        policy: gateway::export::Policy {
            access: cluster_config::Access::ReadWrite,
            clients: vec![],
            squash: cluster_config::Squash::None,
            anon_uid: 65534,
            anon_gid: 65534,
        },
    };
    gateway::Service::new(
        vec![spec],
        gateway::ServiceOptions {
            ports: gateway::Ports {
                nfs: 2049,
                portmap: 111,
            },
            handle_key: gateway::handle::HandleKey::from_cluster_secret(b"a test secret"),
            write_verifier: None,
            host_names: Arc::new(NoNames),
            handles,
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
}

/// The startup checks on real mounts: the aux-gfid mount serves (auto and glusterfs-gfid) and
/// kernel handles refuse it; a mount without `aux-gfid-mount` is refused with the option and
/// the mount point named; a mount of a subdirectory of the volume is refused too.
#[test]
fn startup_checks_on_glusterfs_mounts() {
    use cluster_config::HandleScheme;
    if !can_run("startup_checks_on_glusterfs_mounts") {
        return;
    }
    let lab = common::lab("gs", 1, 0);
    let mut gluster = Gluster::start(&lab);
    let volume = gluster.mount_of("node1").to_path_buf();
    std::fs::create_dir_all(volume.join("demo/deeper")).unwrap();
    let export = volume.join("demo");

    assert_eq!(service_on(&export, HandleScheme::Auto), Ok(()));
    assert_eq!(service_on(&export, HandleScheme::GlusterfsGfid), Ok(()));
    let error = service_on(&export, HandleScheme::Kernel).unwrap_err();
    assert!(error.contains("FUSE"), "{error}");

    let plain = gluster.mount_other(&lab, "node1", None, false);
    let error = service_on(&plain.join("demo"), HandleScheme::Auto).unwrap_err();
    assert!(
        error.contains("aux-gfid-mount") && error.contains(plain.to_str().unwrap()),
        "{error}"
    );
    let subdirectory = gluster.mount_other(&lab, "node1", Some("/demo"), true);
    let error = service_on(&subdirectory.join("deeper"), HandleScheme::Auto).unwrap_err();
    assert!(
        error.contains("subdirectory /demo") && error.contains(subdirectory.to_str().unwrap()),
        "{error}"
    );

    // Not GlusterFS at all.
    let local = lab.host_dir("node1");
    let error = service_on(&local, HandleScheme::GlusterfsGfid).unwrap_err();
    assert!(error.contains("not a GlusterFS FUSE mount"), "{error}");

    drop(gluster);
    lab.teardown().unwrap();
}

/// The measurement of BENCHMARKS.md's "GFID handle resolver" (run by `tests/bench/gfid`, which
/// builds `gateway/examples/resolver_bench.rs` in release and names it in
/// `VIPGATE_RESOLVER_BENCH`): the example on the export directory of a node's aux-gfid mount of
/// a three-node replicated volume (GFID resolver), then on a directory of the local disk
/// (kernel resolver), each in the same run.
#[test]
#[ignore = "a measurement: run by tests/bench/gfid"]
fn resolver_costs() {
    if !can_run("resolver_costs") {
        return;
    }
    let bench = std::env::var("VIPGATE_RESOLVER_BENCH")
        .expect("VIPGATE_RESOLVER_BENCH names the release build of the resolver_bench example");
    let iterations = std::env::var("VIPGATE_BENCH_CALLS").unwrap_or_else(|_| "5000".into());
    let lab = common::lab("gb", 3, 0);
    let gluster = Gluster::start(&lab);
    let export = gluster.mount_of("node1").join("demo");
    std::fs::create_dir(&export).unwrap();
    let local = lab.host_dir("node1").join("local");
    std::fs::create_dir(&local).unwrap();
    for directory in [&export, &local] {
        let output = std::process::Command::new(&bench)
            .arg(directory)
            .arg("auto")
            .arg(&iterations)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", describe(&output));
        print!("{}", String::from_utf8_lossy(&output.stdout));
    }
    drop(gluster);
    lab.teardown().unwrap();
}
