//! Networks for the integration tests, made the way their clients make them: a named
//! namespace (`ip netns add`, as Kubernetes' CRI runtimes do) configured by the CNI
//! bridge plugin, and a small HTTP server on the host side.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::clients::require_tool;
use crate::{run_command, TempDir};

const CNI_PLUGINS: &str = "/usr/lib/cni";
const T: Duration = Duration::from_secs(60);

/// The host's links, addresses, routes and tc qdiscs, to prove a test changed none of
/// them.
pub fn host_network() -> String {
    let mut all = String::new();
    for args in [
        &["ip", "-o", "link"][..],
        &["ip", "-o", "addr"],
        &["ip", "route"],
        &["ip", "-6", "route"],
        &["tc", "qdisc"],
    ] {
        let out = Command::new(args[0])
            .args(&args[1..])
            .output()
            .expect(args[0]);
        all.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    all
}

/// Runs `cmd` in the named namespace `ns` (`ip netns exec`); returns stdout.
pub fn in_netns(ns: &str, cmd: &[&str]) -> String {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    let out = run_command(c, T, None);
    assert!(
        out.status.success(),
        "{cmd:?} in {ns}: {}",
        crate::describe(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A namespace made with `ip netns add`, deleted on drop.
#[derive(Debug)]
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    pub fn new(name: &str) -> Self {
        require_tool("ip", "iproute2");
        let name = format!("{name}-{}", std::process::id());
        let out = run_command(
            {
                let mut c = Command::new("ip");
                c.args(["netns", "add", &name]);
                c
            },
            T,
            None,
        );
        assert!(
            out.status.success(),
            "ip netns add: {}",
            crate::describe(&out)
        );
        Self { name }
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}

/// A CNI bridge network attached to a namespace (ADD on creation, DEL and the bridge
/// removed on drop), with host-local IPAM.
#[derive(Debug)]
pub struct CniBridge {
    conf: String,
    netns: PathBuf,
    pub bridge: String,
    /// The container's address, from the plugin's result (`10.99.0.2`).
    pub ip: String,
    pub gateway: String,
}

impl CniBridge {
    /// Runs the bridge plugin as a CRI runtime would: `eth0` in `netns`, gateway on the
    /// host's `bridge`, addresses from `subnet` (a /24 written as `10.99.0`).
    pub fn add(tmp: &TempDir, netns: &NamedNetns, bridge: &str, subnet: &str) -> Self {
        let plugin = Path::new(CNI_PLUGINS).join("bridge");
        assert!(
            plugin.exists(),
            "{} is missing (apt-get install containernetworking-plugins)",
            plugin.display()
        );
        let conf = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": bridge,
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "subnet": format!("{subnet}.0/24"),
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": tmp.join("cni-ipam"),
            },
        })
        .to_string();
        let mut net = Self {
            conf,
            netns: netns.path(),
            bridge: bridge.to_string(),
            ip: String::new(),
            gateway: format!("{subnet}.1"),
        };
        let result = net.call("ADD");
        let result: serde_json::Value = serde_json::from_str(&result).expect("CNI result JSON");
        let ip = result["ips"][0]["address"].as_str().expect("an address");
        net.ip = ip.split('/').next().unwrap().to_string();
        net
    }

    fn call(&self, command: &str) -> String {
        let mut c = Command::new(Path::new(CNI_PLUGINS).join("bridge"));
        c.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", "runm-test")
            .env("CNI_NETNS", &self.netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PLUGINS);
        let out = run_command(c, T, Some(self.conf.as_bytes()));
        assert!(
            out.status.success(),
            "CNI {command}: {}",
            crate::describe(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for CniBridge {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.call("DEL")));
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .status();
    }
}

/// busybox httpd serving `dir` on `addr:port` in the host's namespace, killed on drop.
#[derive(Debug)]
pub struct HttpServer(Child);

impl HttpServer {
    pub fn start(dir: &Path, listen: &str) -> Self {
        let child = Command::new("busybox")
            .args(["httpd", "-f", "-p", listen, "-h"])
            .arg(dir)
            .stdin(Stdio::null())
            .spawn()
            .expect("busybox httpd (apt-get install busybox-static)");
        std::thread::sleep(Duration::from_millis(300));
        Self(child)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GETs `url` with busybox wget (from the host), retrying for a few seconds while the
/// server comes up; the body, or None. (Debian's busybox 1.35 wget crashes with `-T`:
/// `timeout` bounds it instead.)
pub fn http_get(url: &str, tries: u32) -> Option<String> {
    for _ in 0..tries {
        let out = Command::new("timeout")
            .args(["10", "busybox", "wget", "-q", "-O", "-", url])
            .output()
            .expect("busybox wget");
        if out.status.success() {
            return Some(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    None
}
