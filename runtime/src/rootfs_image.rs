//! The container's rootfs as a virtio-blk disk: an ext4 image made from the bundle's
//! rootfs directory with `mkfs.ext4 -d` (e2fsprogs), sparse, sized from the tree.
//!
//! This copies the tree, so the container's writes stay in the image; sharing the
//! directory itself (virtio-fs) replaces it.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Free space the container gets beyond what its files take.
const HEADROOM_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read rootfs {}: {source}", .path.display())]
    Walk {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run mkfs.ext4 (package e2fsprogs): {0}")]
    Spawn(std::io::Error),
    #[error("mkfs.ext4 failed to build an image of {}: {stderr}", .rootfs.display())]
    Mkfs { rootfs: PathBuf, stderr: String },
}

/// (bytes, inodes) the tree under `dir` needs.
fn measure(dir: &Path) -> Result<(u64, u64), ImageError> {
    let mut bytes = 0u64;
    let mut inodes = 0u64;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| ImageError::Walk {
            path: d.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| ImageError::Walk {
                path: d.clone(),
                source,
            })?;
            let meta = entry.metadata().map_err(|source| ImageError::Walk {
                path: entry.path(),
                source,
            })?;
            inodes += 1;
            // Whole 4 KiB blocks, as ext4 stores them.
            bytes += meta.len().div_ceil(4096) * 4096;
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok((bytes, inodes))
}

/// Builds `image` from the tree at `rootfs`.
pub fn build(rootfs: &Path, image: &Path) -> Result<(), ImageError> {
    let (bytes, inodes) = measure(rootfs)?;
    let size_mib = (bytes + bytes / 4 + HEADROOM_BYTES).div_ceil(1 << 20);
    let inodes = inodes * 2 + 16384;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "root_owner=0:0", "-O", "^has_journal"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(rootfs)
        .arg(image)
        .arg(format!("{size_mib}M"))
        .output()
        .map_err(ImageError::Spawn)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(image);
        return Err(ImageError::Mkfs {
            rootfs: rootfs.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_files_and_directories() {
        let dir = std::env::temp_dir().join(format!("runm-img-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), vec![0u8; 5000]).unwrap();
        let (bytes, inodes) = measure(&dir).unwrap();
        assert_eq!(inodes, 3);
        assert!(bytes >= 8192, "{bytes}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_rootfs_is_named() {
        let e = build(Path::new("/nonexistent-rootfs"), Path::new("/tmp/x.img")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-rootfs"), "{e}");
    }
}
