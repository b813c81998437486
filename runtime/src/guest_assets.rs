//! Finds the guest kernel and initramfs: a flag or environment variable wins, else the
//! files installed beside the `runm` binary (`make` puts them in `target/guest/`,
//! `make install` in `<prefix>/lib/runm/`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

#[derive(Debug, Clone, Copy)]
pub enum Asset {
    Kernel,
    Initramfs,
}

impl Asset {
    fn file_name(self) -> &'static str {
        match self {
            Asset::Kernel => "vmlinux",
            Asset::Initramfs => "initramfs.cpio",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Asset::Kernel => "guest kernel",
            Asset::Initramfs => "guest initramfs",
        }
    }
}

/// Places searched beside the executable, in order.
fn default_dirs(exe: &Path) -> Vec<PathBuf> {
    let Some(bin_dir) = exe.parent() else {
        return Vec::new();
    };
    vec![bin_dir.join("../guest"), bin_dir.join("../lib/runm")]
}

/// Returns `explicit` if given (it must exist), else the first default that exists.
pub fn locate(asset: Asset, explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if !path.is_file() {
            bail!("{} {}: no such file", asset.what(), path.display());
        }
        return Ok(path);
    }
    let exe = std::env::current_exe().context("cannot find the runm executable's path")?;
    let candidates: Vec<PathBuf> = default_dirs(&exe)
        .into_iter()
        .map(|d| d.join(asset.file_name()))
        .collect();
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let searched: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "no {} found (looked in {}); run `make`, or pass its path",
        asset.what(),
        searched.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_beside_the_binary() {
        let dirs = default_dirs(Path::new("/usr/local/bin/runm"));
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/usr/local/bin/../guest"),
                PathBuf::from("/usr/local/bin/../lib/runm")
            ]
        );
    }

    #[test]
    fn explicit_missing_file_is_named() {
        let err = locate(Asset::Kernel, Some("/nope/vmlinux".into())).unwrap_err();
        assert_eq!(err.to_string(), "guest kernel /nope/vmlinux: no such file");
    }
}
