//! Container filesystems, each container in a real microVM: the bundle's rootfs and bind
//! mounts shared over virtio-fs (both directions, read-only where asked, confined to the
//! shared tree), a full Debian rootfs, a block-image rootfs, and bad input that must
//! leave no process, mount or state behind.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use runm_tests::bundle::{Runm, Running, TestBundle};
use runm_tests::*;

/// Boots in the emulated test host take seconds; a whole command well under this.
const T: Duration = Duration::from_secs(150);

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs the bundle to completion and asserts it exited 0.
fn run_ok(runm: &Runm, b: &TestBundle, id: &str) -> String {
    let out = runm.run(&["run", "--bundle", b.path(), id], T);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    stdout(&out)
}

/// Nothing of a finished container may remain: state, processes, mounts.
fn assert_clean(runm: &Runm, tmp: &TempDir) {
    runm.assert_empty();
    assert_no_runm_left();
    assert_eq!(mounts_under(&tmp.0), Vec::<String>::new(), "mounts left");
}

/// Waits for a `runm run` started with `spawn_to_files`; asserts it exited 0 and returns
/// its stdout.
fn finish(run: Running, deadline: Instant) -> String {
    let done = run.wait(deadline);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    done.stdout
}

fn bind(dest: &str, source: &Path, options: &[&str]) -> serde_json::Value {
    serde_json::json!({
        "destination": dest,
        "type": "bind",
        "source": source,
        "options": options,
    })
}

#[test]
fn container_and_host_see_each_others_writes_in_the_rootfs() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("fs-rw");
    let runm = Runm::new(&tmp);
    let script = "cat /from-host; echo written-in-guest > /from-guest; mkdir -p /dir/sub; \
                  touch /dir/sub/f; i=0; while [ ! -e /late ] && [ $i -lt 150 ]; do \
                  sleep 0.2; i=$((i+1)); done; cat /late";
    let b = TestBundle::busybox(&tmp, "b", &["sh", "-c", script]);
    let rootfs = b.dir.join("rootfs");
    std::fs::write(rootfs.join("from-host"), "written-on-host\n").unwrap();
    let mut run = runm.spawn_to_files(&tmp, "fs-rw", &["run", "--bundle", b.path(), "fs-rw"]);
    // The guest's write shows on the host while the container runs.
    let deadline = Instant::now() + T;
    run.wait_for_path(&rootfs.join("dir/sub/f"), deadline);
    std::fs::write(rootfs.join("late"), "created-on-host-during-the-run\n").unwrap();
    let out = finish(run, deadline);
    assert!(out.contains("written-on-host"), "{out}");
    assert!(out.contains("created-on-host-during-the-run"), "{out}");
    assert_eq!(
        std::fs::read_to_string(rootfs.join("from-guest")).unwrap(),
        "written-in-guest\n"
    );
    assert_clean(&runm, &tmp);
}

#[test]
fn read_only_rootfs_and_bind_mounts_refuse_writes_and_read_write_ones_accept_them() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("fs-ro");
    let runm = Runm::new(&tmp);
    let ro = tmp.join("ro-vol");
    let rw = tmp.join("rw-vol");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(&rw).unwrap();
    std::fs::write(ro.join("existing"), "ro-content\n").unwrap();
    let file = tmp.join("single-file");
    std::fs::write(&file, "file-content\n").unwrap();
    let script = "cat /ro/existing /etc/single; \
        echo x > /probe 2>/dev/null && echo root-WRITABLE || echo root-refused; \
        echo x > /ro/new 2>/dev/null && echo ro-WRITABLE || echo ro-refused; \
        echo x > /etc/single 2>/dev/null && echo file-WRITABLE || echo file-refused; \
        echo from-guest > /rw/new && echo rw-accepted; \
        cat /var/cache/image-file; echo x > /var/cache/new && echo copyup-writable";
    let mut b = TestBundle::busybox(&tmp, "b", &["sh", "-c", script]);
    b.edit(|c| {
        c["root"]["readonly"] = true.into();
        let mounts = c["mounts"].as_array_mut().unwrap();
        mounts.push(bind("/ro", &ro, &["rbind", "ro"]));
        mounts.push(bind("/rw", &rw, &["rbind", "rw"]));
        mounts.push(bind("/etc/single", &file, &["bind", "ro"]));
        // runc's `tmpcopyup` (podman --read-only): a tmpfs holding a copy of the image's dir.
        mounts.push(
            serde_json::json!({"destination": "/var/cache", "type": "tmpfs",
            "source": "tmpfs", "options": ["rw", "nosuid", "tmpcopyup", "size=1m"]}),
        );
    });
    std::fs::write(b.dir.join("rootfs/etc/single"), "").unwrap();
    std::fs::create_dir_all(b.dir.join("rootfs/var/cache")).unwrap();
    std::fs::write(
        b.dir.join("rootfs/var/cache/image-file"),
        "from-the-image\n",
    )
    .unwrap();
    let out = run_ok(&runm, &b, "fs-ro");
    for want in [
        "ro-content",
        "file-content",
        "root-refused",
        "ro-refused",
        "file-refused",
        "rw-accepted",
        "from-the-image",
        "copyup-writable",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    assert!(!b.dir.join("rootfs/probe").exists());
    assert!(!ro.join("new").exists());
    assert!(!b.dir.join("rootfs/var/cache/new").exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "file-content\n");
    assert_eq!(
        std::fs::read_to_string(rw.join("new")).unwrap(),
        "from-guest\n"
    );
    assert_clean(&runm, &tmp);
}

#[test]
fn path_escapes_never_reach_host_files_outside_the_shared_tree() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("fs-escape");
    let runm = Runm::new(&tmp);
    // A host directory beside the bundle, with a file the container must not reach.
    let outside = tmp.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), "host-secret\n").unwrap();
    let o = outside.display().to_string();
    let script = format!(
        "cat /../../../../../{o}/secret 2>/dev/null && echo DOTDOT-LEAK; \
         ln -s {o} /abs && cat /abs/secret 2>/dev/null && echo ABS-LEAK; \
         echo pwned > /abs/secret 2>/dev/null; \
         ln -s ../../../../../../{o} /rel && cat /rel/secret 2>/dev/null && echo REL-LEAK; \
         echo ready > /ready; end=$(( $(date +%s) + 8 )); \
         while [ $(date +%s) -lt $end ]; do \
           echo pwned > /swap/secret 2>/dev/null; echo pwned > /swap/new 2>/dev/null; \
           cat /swap/secret 2>/dev/null | grep -q host-secret && echo SWAP-LEAK; \
         done; echo done"
    );
    let b = TestBundle::busybox(&tmp, "b", &["sh", "-c", &script]);
    let rootfs = b.dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("swap")).unwrap();
    let mut run = runm.spawn_to_files(
        &tmp,
        "fs-escape",
        &["run", "--bundle", b.path(), "fs-escape"],
    );
    let deadline = Instant::now() + T;
    run.wait_for_path(&rootfs.join("ready"), deadline);
    // Swap the directory the container writes into for a symlink to the host's secret.
    std::fs::remove_dir_all(rootfs.join("swap")).unwrap();
    std::os::unix::fs::symlink(&outside, rootfs.join("swap")).unwrap();
    let out = finish(run, deadline);
    assert!(out.contains("done"), "{out}");
    assert!(!out.contains("LEAK"), "{out}");
    assert_eq!(
        std::fs::read_to_string(outside.join("secret")).unwrap(),
        "host-secret\n"
    );
    let names: Vec<_> = std::fs::read_dir(&outside)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret"], "the guest wrote outside the shared tree");
    assert_clean(&runm, &tmp);
}

#[test]
fn a_debian_rootfs_runs_a_shell_command() {
    require_kvm();
    let debian = target_profile_dir().join("../debian-rootfs");
    assert!(
        debian.join("etc/debian_version").is_file(),
        "{} is missing: `make integration-test` builds it with debootstrap",
        debian.display()
    );
    let _vm = vm_lock();
    let tmp = TempDir::new("fs-debian");
    let runm = Runm::new(&tmp);
    let mut b = TestBundle::busybox(
        &tmp,
        "b",
        &[
            "/bin/bash",
            "-c",
            "echo debian=$(cat /etc/debian_version); dpkg-query -W -f='${Package}\\n' bash",
        ],
    );
    // The shared tree is used read-only, so the test leaves it as it was.
    let root = debian.canonicalize().unwrap();
    b.edit(|c| c["root"] = serde_json::json!({"path": root, "readonly": true}));
    let out = run_ok(&runm, &b, "fs-debian");
    let version = std::fs::read_to_string(debian.join("etc/debian_version")).unwrap();
    assert!(out.contains(&format!("debian={}", version.trim())), "{out}");
    assert!(out.lines().any(|l| l == "bash"), "{out}");
    assert_clean(&runm, &tmp);
}

#[test]
fn a_block_image_rootfs_runs_beside_a_shared_bind_mount() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("fs-block");
    let runm = Runm::new(&tmp);
    let vol = tmp.join("vol");
    std::fs::create_dir_all(&vol).unwrap();
    let mut b = TestBundle::busybox(
        &tmp,
        "b",
        &[
            "sh",
            "-c",
            "cat /marker; grep ' / ' /proc/mounts; echo block-root > /vol/out",
        ],
    );
    std::fs::write(b.dir.join("rootfs/marker"), "inside-the-image\n").unwrap();
    let image = tmp.join("root.img");
    make_ext4_image(&b.dir.join("rootfs"), &image, "64M");
    // The image, not the directory, must be what the container sees.
    std::fs::remove_dir_all(b.dir.join("rootfs")).unwrap();
    b.edit(|c| {
        c["annotations"] = serde_json::json!({"io.runm.rootfs.block": image});
        c["mounts"]
            .as_array_mut()
            .unwrap()
            .push(bind("/vol", &vol, &["rbind", "rw"]));
    });
    let out = run_ok(&runm, &b, "fs-block");
    assert!(out.contains("inside-the-image"), "{out}");
    assert!(out.contains("/dev/vda / ext4"), "{out}");
    assert_eq!(
        std::fs::read_to_string(vol.join("out")).unwrap(),
        "block-root\n"
    );
    assert_clean(&runm, &tmp);
}

#[test]
fn bad_filesystem_input_is_named_and_leaves_nothing_behind() {
    require_kvm();
    let _vm = vm_lock();
    let tmp = TempDir::new("fs-bad");
    let runm = Runm::new(&tmp);
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit, Vec<&str>)> = vec![
        (
            "missing rootfs",
            Box::new(|c| c["root"]["path"] = "no-such-rootfs".into()),
            vec!["root.path", "no-such-rootfs"],
        ),
        (
            "missing mount source",
            Box::new(|c| {
                let m = bind("/data", Path::new("/no/such/source"), &["rbind"]);
                c["mounts"].as_array_mut().unwrap().push(m);
            }),
            vec!["mounts[", ".source", "/no/such/source"],
        ),
        (
            "unsupported mount type",
            Box::new(|c| {
                let m = serde_json::json!({"destination": "/n", "type": "nfs", "source": "srv:/x"});
                c["mounts"].as_array_mut().unwrap().push(m);
            }),
            vec!["mounts[", ".type", "nfs"],
        ),
        (
            "missing block image",
            Box::new(|c| c["annotations"] = serde_json::json!({"io.runm.rootfs.block": "/no.img"})),
            vec!["io.runm.rootfs.block", "/no.img"],
        ),
    ];
    for (i, (what, edit, wants)) in cases.iter().enumerate() {
        let mut b = TestBundle::busybox(&tmp, &format!("b{i}"), &["true"]);
        b.edit(edit);
        let out = runm.run(&["run", "--bundle", b.path(), &format!("bad{i}")], T);
        assert!(!out.status.success(), "{what}: {}", describe(&out));
        for want in wants {
            assert!(stderr(&out).contains(want), "{what}: {}", describe(&out));
        }
        assert_clean(&runm, &tmp);
    }
    // A failure after virtiofsd started and the shares were mounted: the VM cannot boot.
    let b = TestBundle::busybox(&tmp, "boot", &["true"]);
    runm.assert_unbootable_fails(&tmp, &["run", "--bundle", b.path(), "noboot"]);
    assert_clean(&runm, &tmp);
}
