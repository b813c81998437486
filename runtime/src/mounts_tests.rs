use std::collections::HashMap;

use oci_spec::runtime::{MountBuilder, RootBuilder, Spec};

use super::*;

struct Dir(PathBuf);

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A bundle directory with `rootfs/`, a `vol/` directory and a `file` beside it.
fn bundle_dir(name: &str) -> Dir {
    let dir = std::env::temp_dir().join(format!("runm-mounts-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("rootfs")).unwrap();
    std::fs::create_dir_all(dir.join("vol")).unwrap();
    std::fs::write(dir.join("file"), "x").unwrap();
    Dir(dir)
}

fn bundle(dir: &Dir, mounts: Vec<Mount>, annotations: &[(&str, &str)]) -> Bundle {
    let mut spec = Spec::default();
    spec.set_root(Some(
        RootBuilder::default()
            .path("rootfs")
            .readonly(false)
            .build()
            .unwrap(),
    ));
    spec.set_mounts(Some(mounts));
    let a: HashMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    spec.set_annotations(Some(a));
    Bundle {
        dir: dir.0.clone(),
        spec,
    }
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|o| o.to_string()).collect::<Vec<_>>())
        .build()
        .unwrap()
}

fn guest() -> &'static Path {
    Path::new("/run/runm/shared")
}

#[test]
fn the_rootfs_and_bind_sources_are_shared_and_kernel_mounts_stay() {
    let dir = bundle_dir("plan");
    let b = bundle(
        &dir,
        vec![
            mount("/proc", "proc", "proc", &[]),
            mount("/data", "bind", "vol", &["rbind", "rw"]),
            mount("/etc/hostname", "none", "file", &["bind", "ro"]),
        ],
        &[],
    );
    let plan = plan(&b, guest()).unwrap();
    assert_eq!(
        plan.root,
        RootSource::Shared {
            name: "rootfs".into()
        }
    );
    let names: Vec<_> = plan.shares.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["rootfs", "m1", "m2"]);
    assert_eq!(plan.shares[1].source, dir.0.join("vol"));
    assert_eq!(plan.shares[1].kind, ShareKind::Dir);
    assert!(plan.shares[1].recursive && !plan.shares[1].readonly);
    assert_eq!(plan.shares[2].kind, ShareKind::File);
    assert!(plan.shares[2].readonly && !plan.shares[2].recursive);
    let sources: Vec<_> = plan
        .guest_mounts
        .iter()
        .map(|m| m.source().clone().unwrap())
        .collect();
    assert_eq!(
        sources,
        [
            PathBuf::from("proc"),
            guest().join("m1"),
            guest().join("m2")
        ]
    );
    assert_eq!(plan.guest_mounts[2].typ().as_deref(), Some("bind"));
}

#[test]
fn a_block_rootfs_is_not_shared() {
    let dir = bundle_dir("block");
    std::fs::write(dir.0.join("root.img"), [0u8; 512]).unwrap();
    let b = bundle(
        &dir,
        vec![],
        &[
            (ANNOTATION_ROOTFS_BLOCK, "root.img"),
            (ANNOTATION_ROOTFS_FSTYPE, "ext4"),
        ],
    );
    let plan = plan(&b, guest()).unwrap();
    assert!(plan.shares.is_empty());
    assert_eq!(
        plan.root,
        RootSource::Block {
            path: dir.0.join("root.img"),
            fstype: Some("ext4".into()),
            readonly: false
        }
    );
}

#[test]
fn bad_input_names_the_field() {
    let dir = bundle_dir("bad");
    let err = |mounts: Vec<Mount>, annotations: &[(&str, &str)]| {
        plan(&bundle(&dir, mounts, annotations), guest())
            .unwrap_err()
            .to_string()
    };
    let e = err(
        vec![mount("/x", "bind", "/nonexistent-src", &["rbind"])],
        &[],
    );
    assert!(
        e.contains("mounts[0].source") && e.contains("/nonexistent-src"),
        "{e}"
    );
    let e = err(
        vec![
            mount("/proc", "proc", "proc", &[]),
            mount("/n", "nfs", "server:/x", &[]),
        ],
        &[],
    );
    assert!(e.contains("mounts[1].type") && e.contains("\"nfs\""), "{e}");
    let e = err(vec![mount("/null", "bind", "/dev/null", &["bind"])], &[]);
    assert!(e.contains("character device"), "{e}");
    let e = err(vec![], &[(ANNOTATION_ROOTFS_BLOCK, "missing.img")]);
    assert!(
        e.contains(ANNOTATION_ROOTFS_BLOCK) && e.contains("missing.img"),
        "{e}"
    );
    let e = err(vec![], &[(ANNOTATION_ROOTFS_BLOCK, "vol")]);
    assert!(e.contains("neither a disk image"), "{e}");
    std::fs::write(dir.0.join("ok.img"), [0u8; 512]).unwrap();
    let e = err(
        vec![],
        &[
            (ANNOTATION_ROOTFS_BLOCK, "ok.img"),
            (ANNOTATION_ROOTFS_FSTYPE, "ext4,ro"),
        ],
    );
    assert!(e.contains(ANNOTATION_ROOTFS_FSTYPE), "{e}");
    std::fs::remove_dir_all(dir.0.join("rootfs")).unwrap();
    let e = err(vec![], &[]);
    assert!(e.contains("root.path"), "{e}");
}
