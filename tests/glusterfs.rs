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
//! checks the startup errors on a mount without `aux-gfid-mount`.
//!
//! Two more break the VIP's owner while a client writes through the VIP as a kernel client
//! does (UNSTABLE WRITEs, COMMIT, the batch again when the verifier changes): SIGKILL of its
//! `vipgate node` (bricks and FUSE client live on), and a cut of both its links (the whole node
//! vanishes for the others, and their mounts hang until `network.ping-timeout`). Each checks
//! that no VIP is ever on two nodes, that writes through the VIP succeed again within a
//! deadline, that every chunk acknowledged (committed) before, during and after is on the
//! volume, that the new owner's write verifier differs, and for the cut that the cluster
//! recovers fully once the links are back (VIPs balanced, every node healthy, nothing left to
//! heal); they print the timeline (VIP holders, health) and the measured times. Needs root and
//! glusterfs-server (`tests/run` installs it).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{
    NODES, Sampler, VIPGATE, all_hosted, first_v4, held_by, holders, logs, owner_of, signal,
    vipgate,
};
use common::gluster::{self, Gluster};
use common::rpc::{Rpc, opaque};
use common::{client, describe};
use gateway::rpc::{MOUNT_PROGRAM, NFS_PROGRAM};
use gateway::xdr::{Decoder, Encoder};
use nix::sys::signal::Signal;
use vipgate::lab::{Network, cluster, netns};

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

/// Starts `vipgate node` on every node and waits until the cluster has settled: every VIP
/// hosted, every node holding one and healthy. Before that, on a loaded machine, the first node
/// healthy takes every VIP and rebalancing moves some 10 s later, and a copy under way would
/// meet the move (its CREATE sent again to the new owner answers EXIST).
fn start_settled(lab: &vipgate::lab::Lab) {
    lab.start_cluster(Path::new(VIPGATE)).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(60), || all_hosted(lab)
            && NODES.iter().all(|node| !held_by(lab, node).is_empty())
            && every_node_healthy(lab, "node1")),
        "the cluster never hosted every VIP balanced on healthy nodes: {:?}\n{}",
        holders(lab),
        logs(lab)
    );
}

impl Rpc {
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

impl Rpc {
    /// READDIRPLUS from the start (one reply is enough here): each name with its handle.
    fn readdirplus(&mut self, dir: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, dir);
        encoder.u64(0);
        encoder.fixed_opaque(&[0; 8]);
        encoder.u32(8192); // dircount
        encoder.u32(65536); // maxcount
        let results = self.call(NFS_PROGRAM, 17, &args);
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0, "READDIRPLUS");
        skip_post_op_attr(decoder);
        decoder.fixed_opaque(8).unwrap();
        let mut entries = std::collections::BTreeMap::new();
        while decoder.bool().unwrap() {
            decoder.u64().unwrap();
            let name = String::from_utf8(decoder.opaque(255).unwrap().to_vec()).unwrap();
            decoder.u64().unwrap();
            skip_post_op_attr(decoder);
            assert!(
                decoder.bool().unwrap(),
                "READDIRPLUS gives the handle of {name}"
            );
            entries.insert(name, decoder.opaque(64).unwrap().to_vec());
        }
        assert!(
            decoder.bool().unwrap(),
            "one READDIRPLUS reply holds the directory"
        );
        entries
    }
}

/// NFSv3 `stable_how`: UNSTABLE.
const UNSTABLE: u32 = 0;

impl Rpc {
    /// WRITE of `data` at `offset`; on NFS3_OK the write verifier, else the status as an error.
    fn try_write(
        &mut self,
        handle: &[u8],
        offset: u64,
        data: &[u8],
        stable: u32,
    ) -> Result<[u8; 8], String> {
        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, handle);
        encoder.u64(offset);
        encoder.u32(u32::try_from(data.len()).unwrap());
        encoder.u32(stable);
        opaque(encoder, data);
        let results = self.try_call(NFS_PROGRAM, 7, &args)?;
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().map_err(|error| format!("{error:?}"))?;
        if status != 0 {
            return Err(format!("WRITE at {offset}: NFS status {status}"));
        }
        skip_wcc_data(decoder);
        let count = decoder.u32().unwrap();
        if count as usize != data.len() {
            return Err(format!(
                "WRITE at {offset}: {count} of {} bytes",
                data.len()
            ));
        }
        decoder.u32().unwrap(); // committed
        Ok(decoder.fixed_opaque(8).unwrap().try_into().unwrap())
    }

    /// COMMIT of the whole file; on NFS3_OK the write verifier.
    fn try_commit(&mut self, handle: &[u8]) -> Result<[u8; 8], String> {
        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, handle);
        encoder.u64(0);
        encoder.u32(0);
        let results = self.try_call(NFS_PROGRAM, 21, &args)?;
        let decoder = &mut Decoder::new(&results);
        let status = decoder.u32().map_err(|error| format!("{error:?}"))?;
        if status != 0 {
            return Err(format!("COMMIT: NFS status {status}"));
        }
        skip_wcc_data(decoder);
        Ok(decoder.fixed_opaque(8).unwrap().try_into().unwrap())
    }
}

fn skip_wcc_data(decoder: &mut Decoder<'_>) {
    if decoder.bool().unwrap() {
        decoder.fixed_opaque(24).unwrap();
    }
    skip_post_op_attr(decoder);
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

    start_settled(&lab);
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
        // READDIRPLUS hands out the same handles as CREATE and LOOKUP (GFID handles are
        // cached from CREATE on: the inode number is 64 bits of the GFID).
        for _ in 0..2 {
            let listed = rpc.readdirplus(&export_root);
            assert_eq!(listed["written"], written, "READDIRPLUS: written");
            assert_eq!(listed["upload.bin"], to_rename, "READDIRPLUS: upload.bin");
            assert_eq!(listed["sub"], sub, "READDIRPLUS: sub");
        }
        // A file deleted and made again under the same name on another node's mount is a new
        // object (a new GFID): listed with its own handle, never the old one's.
        let first_one = rpc.create_and_write(&export_root, "again", b"one");
        assert_eq!(rpc.readdirplus(&export_root)["again"], first_one);
        let other_mount = gluster.mount_of(if first == "node1" { "node2" } else { "node1" });
        std::fs::remove_file(other_mount.join("demo/again")).unwrap();
        std::fs::write(other_mount.join("demo/again"), b"second").unwrap();
        // (This node's FUSE mount may answer the name from its entry cache for GlusterFS's
        // entry-timeout, 1 s.)
        let mut second_one = Vec::new();
        assert!(
            common::wait_until(Duration::from_secs(5), || {
                second_one = rpc.readdirplus(&export_root)["again"].clone();
                second_one != first_one
            }),
            "READDIRPLUS still lists the deleted file's handle"
        );
        assert_eq!(rpc.lookup(&export_root, "again"), (0, second_one.clone()));
        assert_eq!(rpc.getattr(&second_one).2, 6, "the new file's size");
        assert!(
            common::wait_until(Duration::from_secs(5), || rpc.getattr(&first_one).0 == 70),
            "the deleted file's handle is not stale"
        );
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
        // Another node, with none of these handles cached, lists the same handles.
        let listed = rpc.readdirplus(&handles.export_root);
        assert_eq!(listed["written"], handles.written);
        assert_eq!(listed["renamed.bin"], handles.to_rename);
        assert_eq!(listed["sub"], handles.sub);
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
            [
                ".",
                "..",
                "again",
                "private",
                "renamed.bin",
                "sub",
                "written"
            ]
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

/// GFID handles are cached from the start, new files included (the inode number is 64 bits of
/// the GFID, which is never reused): a CREATE stores its handle, a READDIRPLUS of files made on
/// the volume directly stores theirs, and a listing again hands out the same bytes from the
/// cache. A file deleted and made again through another client is stale by its old handle,
/// though the resolver kept a descriptor of it. The gateway runs in the test process here, so
/// that its cache can be counted.
#[test]
fn gfid_handles_are_cached_from_creation_on() {
    if !can_run("gfid_handles_are_cached_from_creation_on") {
        return;
    }
    let lab = common::lab("gc", 1, 0);
    let mut gluster = Gluster::start(&lab);
    let other = gluster.mount_other(&lab, "node1", None, false);
    let export = gluster.mount_of("node1").join("demo");
    std::fs::create_dir(&export).unwrap();
    const ELSEWHERE: usize = 20;
    for index in 0..ELSEWHERE {
        std::fs::write(export.join(format!("made-{index}")), b"on the volume").unwrap();
    }
    let listener = gateway::server::bind_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let address = listener.local_addr().unwrap();
    let service = Arc::new(service(&export, cluster_config::HandleScheme::Auto).unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = std::thread::spawn({
        let service = service.clone();
        let shutdown = shutdown.clone();
        move || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap()
                .block_on(gateway::serve(
                    service,
                    vec![listener],
                    gateway::server::Limits::default(),
                    shutdown,
                ))
                .unwrap();
        }
    });

    let mut rpc = Rpc::connect(address);
    let root = rpc.mount("/demo");
    let before = service.handle_cache().len();
    let created = rpc.create_and_write(&root, "created", b"new");
    assert_eq!(
        service.handle_cache().len(),
        before + 1,
        "CREATE stores the new file's handle"
    );
    let listed = rpc.readdirplus(&root);
    assert_eq!(listed.len(), ELSEWHERE + 3, "{listed:?}");
    assert_eq!(listed["created"], created);
    // `.` and `..` are the directory's own handles; every other entry is now cached.
    assert_eq!(service.handle_cache().len(), before + 1 + ELSEWHERE);
    for (name, handle) in &listed {
        if !name.starts_with('.') {
            assert_eq!(
                rpc.lookup(&root, name),
                (0, handle.clone()),
                "LOOKUP {name}"
            );
        }
    }
    assert_eq!(
        rpc.readdirplus(&root),
        listed,
        "listed again, from the cache"
    );
    assert_eq!(service.handle_cache().len(), before + 1 + ELSEWHERE);

    // Deleted through another client of the volume (another node would be the same): the
    // handle, opened and used just before, is stale from then on.
    let gone = listed["made-0"].clone();
    assert_eq!(rpc.getattr(&gone).0, 0);
    std::fs::remove_file(other.join("demo/made-0")).unwrap();
    std::fs::write(other.join("demo/made-0"), b"made again").unwrap();
    assert!(
        common::wait_until(Duration::from_secs(5), || rpc.getattr(&gone).0 == 70),
        "the deleted file's handle is not stale"
    );

    shutdown.cancel();
    drop(rpc);
    server.join().unwrap();
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
    service(path, handles).map(drop)
}

/// A gateway service exporting `path` as `/demo` to everyone; the startup error with its
/// causes as text.
fn service(path: &Path, handles: cluster_config::HandleScheme) -> Result<gateway::Service, String> {
    let spec = gateway::ExportSpec {
        name: "demo".into(),
        mount_path: "/demo".into(),
        local_path: path.to_path_buf(),
        policy: gateway::export::Policy {
            access: cluster_config::Access::ReadWrite,
            clients: vec![cluster_config::ClientMatch::Any],
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
                udp: false,
            },
            handle_key: gateway::handle::HandleKey::from_cluster_secret(b"a test secret"),
            write_verifier: None,
            host_names: Arc::new(NoNames),
            handles,
        },
    )
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

/// The bytes of the writer's chunks.
const CHUNK: usize = 32 * 1024;
/// Chunks written UNSTABLE before each COMMIT.
const BATCH: u64 = 4;

/// Chunk `n` of the writer's file: its number in every 8 bytes, so a chunk written at the
/// wrong place or a stale one is told apart.
/// vipgate's gateway on node1's GlusterFS FUSE mount against NFS-Ganesha's GLUSTER FSAL
/// (libgfapi, no FUSE) exporting the same volume from the same node, from the same client, in
/// the same run (BENCHMARKS.md, "NFS on GlusterFS"; run by `tests/bench/glusterfs-nfs`).
/// Ganesha is set up as the GlusterFS documentation sets it up for a cluster: its default
/// caches, kept coherent by the volume's cache-invalidation upcalls. Prints one line per server,
/// round and row, then the medians.
#[test]
#[ignore = "a measurement: run by tests/bench/glusterfs-nfs"]
fn nfs_on_glusterfs_against_ganesha() {
    if !can_run("nfs_on_glusterfs_against_ganesha") {
        return;
    }
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.to_owned());
    let vipgate_bin = std::env::var("VIPGATE_BENCH_VIPGATE")
        .expect("VIPGATE_BENCH_VIPGATE names a release build of vipgate");
    let client_bin = std::env::var("VIPGATE_BENCH_CLIENT")
        .expect("VIPGATE_BENCH_CLIENT names a release build of the nfs_bench example");
    let rounds: usize = setting("VIPGATE_BENCH_ROUNDS", "3").parse().unwrap();
    let files = setting("VIPGATE_BENCH_FILES", "500");
    let mib: usize = setting("VIPGATE_BENCH_MIB", "64").parse().unwrap();

    let lab = common::lab("gn", 3, 1);
    let gluster = Gluster::start(&lab);
    // GlusterFS's `metadata-cache` option group (its files are not in the lab's glusterd
    // directory, so the options are set one by one): the tuning its documentation gives for
    // NFS-Ganesha and Samba, which both servers get here.
    for (key, value) in [
        ("features.cache-invalidation", "on"),
        ("features.cache-invalidation-timeout", "600"),
        ("performance.stat-prefetch", "on"),
        ("performance.cache-invalidation", "on"),
        ("performance.md-cache-timeout", "600"),
        ("network.inode-lru-limit", "200000"),
    ] {
        gluster.set_option(key, value);
    }
    let node1 = lab.host("node1").unwrap();
    let netns = node1.netns.clone();
    let server = node1.address(Network::Public, false).unwrap();
    let cluster_address = node1.address(Network::Cluster, false).unwrap();
    let mount = gluster.mount_of("node1").to_path_buf();
    std::fs::create_dir(mount.join("bench")).unwrap();
    let work = lab.host_dir("node1").join("bench");
    std::fs::create_dir_all(work.join("state")).unwrap();
    std::fs::write(
        work.join("cluster.yaml"),
        format!(
            "cluster:\n  name: gnbench\n  secret: a benchmark secret that is long enough\n  \
             data_dir: {state}\nnodes:\n  - name: node1\n    cluster_address: {cluster_address}\n    \
             public_interfaces: [pub0]\npublic_addresses:\n  - address: 192.0.2.250/24\n\
             volume:\n  path: {mount}\n  handles: auto\nnfs:\n  exports:\n    - name: data\n      \
             path: bench\n      protocols: [3]\n      access: rw\n      squash: none\n      \
             clients: [0.0.0.0/0]\n",
            state = work.join("state").display(),
            mount = mount.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("ganesha.conf"),
        format!(
            "NFS_CORE_PARAM {{ Protocols = 3; NFS_Port = 2050; MNT_Port = 20050; \
             Enable_NLM = false; Enable_RQUOTA = false; Enable_UDP = false; \
             Mount_Path_Pseudo = true; }}\nNFS_KRB5 {{ Active_krb5 = false; }}\n\
             NFSv4 {{ Graceless = true; RecoveryBackend = fs; RecoveryRoot = {recovery}; }}\n\
             EXPORT {{ Export_Id = 1; Path = \"/bench\"; Pseudo = /data; Protocols = 3; \
             Transports = TCP; Access_Type = RW; Squash = No_Root_Squash; SecType = sys; \
             FSAL {{ Name = GLUSTER; Hostname = \"{cluster_address}\"; Volume = \"{volume}\"; }} }}\n\
             LOG {{ Default_Log_Level = WARN; }}\n",
            recovery = work.join("recovery").display(),
            volume = gluster::VOLUME,
        ),
    )
    .unwrap();
    std::fs::create_dir_all(work.join("recovery")).unwrap();

    let in_node = |program: &str| {
        let mut command = std::process::Command::new("ip");
        command.args(["netns", "exec", &netns, program]);
        command
    };
    let log = |name: &str| std::fs::File::create(work.join(name)).unwrap();
    let mut children = Vec::new();
    children.push(
        in_node(&vipgate_bin)
            .args(["nfs", "--config"])
            .arg(work.join("cluster.yaml"))
            .args(["--nfs-port", "2049", "--portmap-port", "1111"])
            .stderr(log("vipgate.log"))
            .spawn()
            .unwrap(),
    );
    // Ganesha registers with an rpcbind of its own (it exits when it cannot register), whose
    // socket and lock files live on a private /run.
    children.push(
        in_node("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg("mount -t tmpfs gn-run /run && exec rpcbind -f")
            .stderr(log("rpcbind.log"))
            .spawn()
            .unwrap(),
    );
    assert!(
        common::wait_until(Duration::from_secs(10), || in_node("rpcinfo")
            .args(["-p", "127.0.0.1"])
            .output()
            .is_ok_and(|output| output.status.success())),
        "rpcbind never came up"
    );
    children.push(
        in_node("ganesha.nfsd")
            .args(["-F", "-f"])
            .arg(work.join("ganesha.conf"))
            .arg("-L")
            .arg(work.join("ganesha.log"))
            .arg("-p")
            .arg(work.join("ganesha.pid"))
            .stderr(log("ganesha.out.log"))
            .spawn()
            .unwrap(),
    );
    let servers = [("vipgate", 2049u16, 2049u16), ("ganesha", 2050, 20050)];
    for (name, nfs_port, _) in servers {
        let address = SocketAddr::new(server, nfs_port);
        assert!(
            common::wait_until(Duration::from_secs(30), || netns::run_in(
                &lab.host("client1").unwrap().netns,
                || TcpStream::connect_timeout(&address, Duration::from_millis(300)).is_ok()
            )
            .unwrap_or(false)),
            "{name} never answered on {address}: {}",
            std::fs::read_to_string(work.join("ganesha.log")).unwrap_or_default()
        );
    }

    let source = lab.host_dir("client1").join("source.bin");
    let copy = lab.host_dir("client1").join("copy.bin");
    let content: Vec<u8> = (0..mib * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    std::fs::write(&source, &content).unwrap();
    let mut results: BTreeMap<(&str, String), Vec<f64>> = BTreeMap::new();
    for round in 0..rounds {
        for (name, nfs_port, mount_port) in servers {
            let url = |file: &str| {
                format!("nfs://{server}/data/{file}?nfsport={nfs_port}&mountport={mount_port}")
            };
            let file = format!("{name}-{round}.bin");
            for (row, from, to) in [
                ("write", source.display().to_string(), url(&file)),
                ("read", url(&file), copy.display().to_string()),
            ] {
                let _ = std::fs::remove_file(&copy);
                let started = Instant::now();
                let output = client(&lab, "nfs-cp", &[&from, &to]);
                let seconds = started.elapsed().as_secs_f64();
                assert!(
                    output.status.success(),
                    "{name} {row}: {}",
                    describe(&output)
                );
                let rate = mib as f64 / seconds;
                println!("{name} round {round} {row} {rate:.1} MiB/s");
                results
                    .entry((name, row.to_owned()))
                    .or_default()
                    .push(rate);
            }
            assert!(
                std::fs::read(&copy).unwrap() == content,
                "{name}: the copy differs"
            );
            let output = client(
                &lab,
                &client_bin,
                &[
                    "meta",
                    "--server",
                    &server.to_string(),
                    "--nfs-port",
                    &nfs_port.to_string(),
                    "--mount-port",
                    &mount_port.to_string(),
                    "--export",
                    "/data",
                    "--dir",
                    &format!("meta-{name}-{round}"),
                    "--files",
                    &files,
                    "--listings",
                    "3",
                ],
            );
            assert!(
                output.status.success(),
                "{name} meta: {}",
                describe(&output)
            );
            for line in String::from_utf8_lossy(&output.stdout).lines() {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let [phase, operations, seconds] = fields[..] else {
                    continue;
                };
                let rate = operations.parse::<f64>().unwrap() / seconds.parse::<f64>().unwrap();
                println!("{name} round {round} {phase} {rate:.0} /s");
                results
                    .entry((name, phase.to_owned()))
                    .or_default()
                    .push(rate);
            }
        }
    }
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    };
    println!("row | vipgate | ganesha | vipgate / ganesha");
    let rows: Vec<String> = results
        .keys()
        .filter(|(name, _)| *name == "vipgate")
        .map(|(_, row)| row.clone())
        .collect();
    for row in rows {
        let ours = median(&results[&("vipgate", row.clone())]);
        let theirs = median(&results[&("ganesha", row.clone())]);
        println!("{row} | {ours:.1} | {theirs:.1} | {:.2}", ours / theirs);
    }

    for child in &mut children {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            Signal::SIGTERM,
        );
    }
    for mut child in children {
        let _ = child.wait();
    }
    drop(gluster);
    lab.teardown().unwrap();
}

fn chunk(n: u64) -> Vec<u8> {
    (0..CHUNK / 8)
        .flat_map(|i| (n << 20 | i as u64).to_be_bytes())
        .collect()
}

/// What the writer saw.
#[derive(Default)]
struct WriteLog {
    /// Chunks acknowledged: written UNSTABLE and committed under the verifier their WRITEs
    /// returned.
    acked: u64,
    /// When each batch was acknowledged.
    successes: Vec<Instant>,
    /// When a batch failed, and why.
    failures: Vec<(Instant, String)>,
    /// The write verifiers seen, in order.
    verifiers: Vec<[u8; 8]>,
}

impl WriteLog {
    fn first_success_after(&self, instant: Instant) -> Option<Instant> {
        self.successes.iter().copied().find(|at| *at > instant)
    }
}

/// An NFS client that appends batches of chunks to the file `handle` through `nfs`, as a
/// kernel client does: UNSTABLE WRITEs then a COMMIT. When a call fails it reconnects; a batch
/// whose WRITEs were all answered is COMMITted again on the new connection, and sent again
/// only if that COMMIT's verifier is not the WRITEs' (another server instance answered: what
/// the first one had not made durable may be lost); any other failure sends the batch again.
/// Runs until `stop`.
fn write_through(
    nfs: SocketAddr,
    handle: &[u8],
    stop: &AtomicBool,
    log: &Mutex<WriteLog>,
    start: Instant,
) {
    let mut connection: Option<Rpc> = None;
    let mut failing = false;
    // The verifier of a batch whose WRITEs were answered but not yet committed.
    let mut written: Option<[u8; 8]> = None;
    while !stop.load(Ordering::Relaxed) {
        let first = log.lock().unwrap().acked;
        let result = (|| {
            if connection.is_none() {
                connection = Some(
                    Rpc::try_connect(nfs, Duration::from_millis(500), Duration::from_secs(3))
                        .map_err(|error| format!("connect: {error}"))?,
                );
            }
            let rpc = connection.as_mut().unwrap();
            if written.is_none() {
                let mut verifier = None;
                for n in first..first + BATCH {
                    let answer = rpc.try_write(handle, n * CHUNK as u64, &chunk(n), UNSTABLE)?;
                    if verifier.is_some_and(|before| before != answer) {
                        return Err("the verifier changed within a batch".to_owned());
                    }
                    verifier = Some(answer);
                }
                written = verifier;
            }
            let committed = rpc.try_commit(handle)?;
            if Some(committed) != written.take() {
                return Err("COMMIT returned another verifier: the batch is sent again".into());
            }
            Ok(committed)
        })();
        let mut log = log.lock().unwrap();
        match result {
            Ok(verifier) => {
                if failing {
                    eprintln!(
                        "[writer {:>7.2}s] acknowledged again, {} failures so far",
                        start.elapsed().as_secs_f64(),
                        log.failures.len()
                    );
                    failing = false;
                }
                log.acked += BATCH;
                log.successes.push(Instant::now());
                if log.verifiers.last() != Some(&verifier) {
                    log.verifiers.push(verifier);
                }
            }
            Err(error) => {
                if !failing {
                    eprintln!(
                        "[writer {:>7.2}s] failing: {error}",
                        start.elapsed().as_secs_f64()
                    );
                    failing = true;
                }
                connection = None;
                log.failures.push((Instant::now(), error));
                drop(log);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Reads `path` on another thread, waiting at most `timeout` (a hung FUSE mount blocks the
/// reader in the kernel; it is left behind).
fn read_within(path: &Path, timeout: Duration) -> Result<Vec<u8>, String> {
    let (sender, receiver) = std::sync::mpsc::channel();
    let owned = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = sender.send(std::fs::read(&owned).map_err(|error| error.to_string()));
    });
    receiver
        .recv_timeout(timeout)
        .map_err(|_| format!("reading {} took over {timeout:?}", path.display()))?
}

/// Checks that the first `acked` chunks of `bytes` (a file read from `place`) are the chunks
/// written.
fn assert_chunks(bytes: &[u8], acked: u64, place: &str) {
    assert!(
        bytes.len() >= acked as usize * CHUNK,
        "{place}: {} bytes, {acked} chunks of {CHUNK} acknowledged",
        bytes.len()
    );
    for n in 0..acked {
        let at = n as usize * CHUNK;
        assert!(
            bytes[at..at + CHUNK] == chunk(n)[..],
            "{place}: acknowledged chunk {n} (at {at}) differs"
        );
    }
}

/// Health and ownership as the cluster reports them, sampled until stopped: every change of a
/// node's health (as `observer` reports it) and of `vip`'s holders, with its time since `start`.
struct Watch {
    stop: AtomicBool,
    timeline: Mutex<Vec<(Duration, String)>>,
    /// Per node: when it was first and last seen unhealthy.
    unhealthy: Mutex<BTreeMap<String, (Duration, Duration)>>,
    /// The time `vip` was seen on no node, in total.
    dark: Mutex<Duration>,
}

impl Watch {
    fn new() -> Watch {
        Watch {
            stop: AtomicBool::new(false),
            timeline: Mutex::new(Vec::new()),
            unhealthy: Mutex::new(BTreeMap::new()),
            dark: Mutex::new(Duration::ZERO),
        }
    }

    fn run(&self, lab: &vipgate::lab::Lab, observers: &[&str], vip: IpAddr, start: Instant) {
        let mut last_health: BTreeMap<String, String> = BTreeMap::new();
        let mut last_holders = String::new();
        let mut last_round = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let now = start.elapsed();
            let held = holders(lab)[&vip].clone();
            if held.is_empty() {
                *self.dark.lock().unwrap() += last_round.elapsed();
            }
            last_round = Instant::now();
            let text = format!("{vip} on {held:?}");
            if text != last_holders {
                self.note(now, text.clone());
                last_holders = text;
            }
            for observer in observers {
                let (code, text) = vipgate(lab, observer, &["status", "--json"]);
                let Ok(status) = serde_json::from_str::<serde_json::Value>(&text) else {
                    continue;
                };
                if code != 0 {
                    continue;
                }
                for node in status["nodes"].as_array().into_iter().flatten() {
                    let name = node["name"].as_str().unwrap_or_default().to_owned();
                    if name != *observer {
                        continue;
                    }
                    let unhealthy = node["flags"]["unhealthy"] == true;
                    let health = format!(
                        "{name} {} {}",
                        if unhealthy { "unhealthy" } else { "healthy" },
                        node["failing_probes"]
                    );
                    if unhealthy {
                        let at = start.elapsed();
                        self.unhealthy
                            .lock()
                            .unwrap()
                            .entry(name.clone())
                            .and_modify(|(_, last)| *last = at)
                            .or_insert((at, at));
                    }
                    if last_health.get(&name) != Some(&health) {
                        self.note(now, health.clone());
                        last_health.insert(name, health);
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Records `event` (and shows it at once, for a run that hangs or fails).
    fn note(&self, at: Duration, event: String) {
        eprintln!("[watch {:>7.2}s] {event}", at.as_secs_f64());
        self.timeline.lock().unwrap().push((at, event));
    }

    fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn print(&self, what: &str) {
        eprintln!("{what}: timeline");
        for (at, event) in self.timeline.lock().unwrap().drain(..) {
            eprintln!("  {:>7.2}s {event}", at.as_secs_f64());
        }
    }
}

/// A three-node cluster on a replicated volume, serving the demo export, every VIP hosted and
/// every node healthy with at least one VIP; the writer's file made in the export.
fn gluster_cluster(prefix: &str) -> (vipgate::lab::Lab, Gluster) {
    let lab = common::lab(prefix, 3, 1);
    let gluster = Gluster::start(&lab);
    let export = gluster.mount_of("node1").join(cluster::DEMO_EXPORT);
    let owner = Some(cluster::DEMO_EXPORT_OWNER);
    std::fs::create_dir(&export).unwrap();
    std::os::unix::fs::chown(&export, owner, owner).unwrap();
    std::fs::write(export.join("log"), b"").unwrap();
    std::os::unix::fs::chown(export.join("log"), owner, owner).unwrap();
    start_settled(&lab);
    (lab, gluster)
}

/// Whether `observer` sees every node connected, healthy and unfenced.
fn every_node_healthy(lab: &vipgate::lab::Lab, observer: &str) -> bool {
    let (code, text) = vipgate(lab, observer, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    code == 0
        && status["nodes"].as_array().is_some_and(|nodes| {
            nodes.len() == 3
                && nodes.iter().all(|node| {
                    ["disconnected", "unhealthy", "fenced"]
                        .iter()
                        .all(|flag| node["flags"][flag] == false)
                })
        })
}

/// The MOUNT of the export and the writer's file through `nfs`, from the client namespace.
fn export_and_file(client_ns: &str, nfs: SocketAddr) -> (Vec<u8>, Vec<u8>) {
    netns::run_in(client_ns, || {
        let mut rpc = Rpc::connect(nfs);
        let root = rpc.mount(&format!("/{}", cluster::DEMO_EXPORT));
        let (status, file) = rpc.lookup(&root, "log");
        assert_eq!(status, 0, "LOOKUP log");
        (root, file)
    })
    .unwrap()
}

/// The writer's progress: acknowledged chunks.
fn acked(log: &Mutex<WriteLog>) -> u64 {
    log.lock().unwrap().acked
}

#[test]
fn a_killed_owner_on_glusterfs_loses_no_acknowledged_write() {
    if !can_run("a_killed_owner_on_glusterfs_loses_no_acknowledged_write") {
        return;
    }
    let started = Instant::now();
    let (lab, gluster) = gluster_cluster("gxk");
    let namespaces = gluster::netns_inodes(&lab);
    let serving = started.elapsed();
    let vip = first_v4();
    let victim = owner_of(&lab, vip);
    let client_ns = lab.host("client1").unwrap().netns.clone();
    let nfs = SocketAddr::new(vip, 2049);
    let (_root, file) = export_and_file(&client_ns, nfs);
    let survivors: Vec<&str> = NODES.into_iter().filter(|node| *node != victim).collect();

    let sampler = Sampler::new(&lab);
    let watch = Watch::new();
    let log = Mutex::new(WriteLog::default());
    let stop = AtomicBool::new(false);
    let mut killed = None;
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| sampler.run());
        let _stop = sampler.stop_on_drop();
        let (watch, lab_ref, survivors) = (&watch, &lab, &survivors);
        scope.spawn(move || watch.run(lab_ref, survivors, vip, start));
        scope.spawn(|| {
            netns::run_in(&client_ns, || write_through(nfs, &file, &stop, &log, start)).unwrap();
        });
        let _stop_writer = StopFlag(&stop);
        let _stop_watch = StopFlag(&watch.stop);
        assert!(
            common::wait_until(Duration::from_secs(20), || acked(&log) >= 4 * BATCH),
            "the writer got nothing acknowledged through {vip}: {:?}",
            log.lock().unwrap().failures.last()
        );

        // SIGKILL of the owner's vipgate node only: its bricks and FUSE client live on.
        let at = Instant::now();
        killed = Some(at);
        signal(&lab, victim, Signal::SIGKILL);
        eprintln!(
            "[test {:>7.2}s] {victim} killed",
            start.elapsed().as_secs_f64()
        );
        let acked_at_kill = acked(&log);
        assert!(
            common::wait_until(Duration::from_secs(30), || {
                let log = log.lock().unwrap();
                log.first_success_after(at).is_some() && log.acked >= acked_at_kill + 4 * BATCH
            }),
            "no write through {vip} succeeded after the kill of {victim}: {:?}\n{}",
            log.lock().unwrap().failures.last(),
            logs(&lab)
        );
        stop.store(true, Ordering::Relaxed);
        watch.finish();
    });
    sampler.assert_clean();
    let killed = killed.unwrap();
    let new_owner = owner_of(&lab, vip);
    assert_ne!(new_owner, victim);
    let log = log.into_inner().unwrap();

    // The handle issued by the first owner reads the first chunks through the new one.
    netns::run_in(&client_ns, || {
        let mut rpc = Rpc::connect(nfs);
        let mut expected = chunk(0);
        expected.extend(chunk(1));
        assert!(
            rpc.read(&file) == expected,
            "READ through {new_owner} with the handle from {victim}"
        );
    })
    .unwrap();
    // Every acknowledged chunk is on the volume, as every mount sees it (the killed node's
    // FUSE client still runs).
    for node in NODES {
        let bytes = read_within(
            &gluster.mount_of(node).join("demo/log"),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_chunks(&bytes, log.acked, &format!("{node}'s mount"));
    }
    assert!(
        log.verifiers.len() >= 2,
        "the new owner answered with the old owner's write verifier: {:?}",
        log.verifiers
    );
    let failed_from = log
        .failures
        .iter()
        .map(|(at, _)| *at)
        .find(|at| *at >= killed);
    let back = log.first_success_after(killed).unwrap();
    watch.print(&format!("SIGKILL of {victim}'s vipgate node"));
    eprintln!(
        "SIGKILL of {victim}: cluster serving {serving:?} after the start; NFS calls through \
         {vip} failed {:?} after the kill, served again by {new_owner} {:?} after it \
         ({} failed batches: first {:?}); {} chunks acknowledged, all on the volume; {vip} \
         unhosted for {:?} in total",
        failed_from.map(|at| at - killed),
        back - killed,
        log.failures.len(),
        log.failures.first().map(|(_, why)| why),
        log.acked,
        watch.dark.lock().unwrap()
    );
    drop(gluster);
    let name = lab.name().to_owned();
    lab.teardown().unwrap();
    let left = gluster::leftovers(&name, &namespaces);
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn a_cut_off_owner_on_glusterfs_loses_no_acknowledged_write_and_the_cluster_recovers() {
    if !can_run("a_cut_off_owner_on_glusterfs_loses_no_acknowledged_write_and_the_cluster_recovers")
    {
        return;
    }
    let started = Instant::now();
    let (lab, gluster) = gluster_cluster("gxc");
    let namespaces = gluster::netns_inodes(&lab);
    let serving = started.elapsed();
    let vip = first_v4();
    let cut = owner_of(&lab, vip);
    let client_ns = lab.host("client1").unwrap().netns.clone();
    let nfs = SocketAddr::new(vip, 2049);
    let (_root, file) = export_and_file(&client_ns, nfs);
    let survivor = NODES.into_iter().find(|node| *node != cut).unwrap();
    let links = [Network::Public, Network::Cluster];

    let sampler = Sampler::new(&lab);
    let watch = Watch::new();
    let log = Mutex::new(WriteLog::default());
    let stop = AtomicBool::new(false);
    let mut times = BTreeMap::new();
    let mut cut_at = None;
    let mut acked_at_cut = 0;
    let start = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| sampler.run());
        let _stop = sampler.stop_on_drop();
        let (watch, lab_ref) = (&watch, &lab);
        scope.spawn(move || watch.run(lab_ref, &NODES, vip, start));
        scope.spawn(|| {
            netns::run_in(&client_ns, || write_through(nfs, &file, &stop, &log, start)).unwrap();
        });
        let _stop_writer = StopFlag(&stop);
        let _stop_watch = StopFlag(&watch.stop);
        assert!(
            common::wait_until(Duration::from_secs(20), || acked(&log) >= 4 * BATCH),
            "the writer got nothing acknowledged through {vip}: {:?}",
            log.lock().unwrap().failures.last()
        );

        // The owner loses both links: vipgate, glusterd, its brick and its FUSE client are
        // gone for the others, and its mount loses the others' bricks.
        lab.cut(cut, &links).unwrap();
        let at = Instant::now();
        eprintln!(
            "[test {:>7.2}s] {cut} cut off",
            start.elapsed().as_secs_f64()
        );
        cut_at = Some(at);
        acked_at_cut = acked(&log);
        assert!(
            common::wait_until(Duration::from_secs(30), || {
                matches!(holders(&lab)[&vip].as_slice(), [one] if *one != cut)
            }),
            "{vip} never moved off cut {cut}: {:?}\n{}",
            holders(&lab),
            logs(&lab)
        );
        times.insert("VIP on a survivor", at.elapsed());
        assert!(
            common::wait_until(Duration::from_secs(30), || log
                .lock()
                .unwrap()
                .first_success_after(at)
                .is_some()),
            "no write through {vip} succeeded within 30 s of the cut of {cut}: {:?}\n{}",
            log.lock().unwrap().failures.last(),
            logs(&lab)
        );
        // The cut lasts a while: the writer goes on through the survivors (so the cut node's
        // brick falls behind and has to be healed), and the cut node, alone, has dropped every
        // VIP when its lease ended.
        assert!(
            common::wait_until(Duration::from_secs(30), || at.elapsed() >= CUT_LENGTH
                && held_by(&lab, cut).is_empty()
                && acked(&log) >= acked_at_cut + 4 * BATCH),
            "the writer stalled or {cut} kept VIPs during the cut: {:?}, {} chunks",
            holders(&lab),
            acked(&log)
        );
        stop.store(true, Ordering::Relaxed);
        watch.print(&format!("cut of {cut}"));
        let written = log.lock().unwrap().acked;
        // Every acknowledged chunk is on the survivors' side of the volume.
        let bytes = read_within(
            &gluster.mount_of(survivor).join("demo/log"),
            Duration::from_secs(20),
        )
        .unwrap();
        assert_chunks(
            &bytes,
            written,
            &format!("{survivor}'s mount during the cut"),
        );

        // The links come back: the node rejoins, takes VIPs again after its hold-down, every
        // node is healthy and the volume heals.
        lab.restore(cut, &links).unwrap();
        let restored = Instant::now();
        eprintln!(
            "[test {:>7.2}s] {cut} restored",
            start.elapsed().as_secs_f64()
        );
        let mut heal = u64::MAX;
        let recovered = common::wait_until(Duration::from_secs(120), || {
            all_hosted(&lab)
                && NODES.iter().all(|node| !held_by(&lab, node).is_empty())
                && NODES.iter().all(|node| every_node_healthy(&lab, node))
                && {
                    heal = gluster.heal_pending();
                    heal == 0
                }
        });
        assert!(
            recovered,
            "no full recovery within 120 s of restoring {cut}: {:?}, {heal} entries to heal \
             ({})\n{}",
            holders(&lab),
            gluster.heal_entries().join(", "),
            logs(&lab)
        );
        times.insert("full recovery after the restore", restored.elapsed());
        watch.finish();
    });
    sampler.assert_clean();
    let cut_at = cut_at.unwrap();
    let log = log.into_inner().unwrap();
    // The healed brick of the node that was cut off has every acknowledged chunk too.
    let bytes = read_within(
        &gluster.mount_of(cut).join("demo/log"),
        Duration::from_secs(20),
    )
    .unwrap();
    assert_chunks(&bytes, log.acked, &format!("{cut}'s mount after the heal"));
    assert!(
        log.verifiers.len() >= 2,
        "the new owner answered with the old owner's write verifier: {:?}",
        log.verifiers
    );
    let back = log.first_success_after(cut_at).unwrap();
    watch.print(&format!("cut of {cut}"));
    let unhealthy: Vec<String> = watch
        .unhealthy
        .lock()
        .unwrap()
        .iter()
        .map(|(node, (first, last))| {
            format!(
                "{node} {:.2}..{:.2}s",
                first.as_secs_f64(),
                last.as_secs_f64()
            )
        })
        .collect();
    eprintln!(
        "cut of {cut}: cluster serving {serving:?} after the start; {vip} on a survivor {:?} \
         after the cut; NFS writes through {vip} served again {:?} after it ({} failed \
         batches, last: {:?}); {} chunks acknowledged ({acked_at_cut} before the cut), all \
         on the volume; {vip} unhosted for {:?} in total; seen unhealthy: {unhealthy:?}; full \
         recovery (balanced, healthy, healed) {:?} after the restore",
        times["VIP on a survivor"],
        back - cut_at,
        log.failures.len(),
        log.failures.last().map(|(_, why)| why),
        log.acked,
        watch.dark.lock().unwrap(),
        times["full recovery after the restore"],
    );
    drop(gluster);
    let name = lab.name().to_owned();
    lab.teardown().unwrap();
    let left = gluster::leftovers(&name, &namespaces);
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// How long the cut of the cut-off test lasts at least.
const CUT_LENGTH: Duration = Duration::from_secs(10);

/// Sets the flag when dropped, so that a failing assertion stops a scoped thread.
struct StopFlag<'a>(&'a AtomicBool);

impl Drop for StopFlag<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}
