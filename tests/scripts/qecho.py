import socket, sys, threading, subprocess, os, time
n = int(sys.argv[1]); size = int(sys.argv[2])
g = "target/guest"
p = subprocess.Popen(["qemu-system-x86_64", "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on,ioapic2=off,acpi=off",
    "-accel", "kvm", "-cpu", "host", "-smp", "1", "-m", "256", "-nodefaults", "-no-user-config", "-display", "none",
    "-serial", "stdio", "-no-reboot", "-device", "i8042", "-device", "vhost-vsock-device,guest-cid=3",
    "-kernel", g + "/vmlinux", "-initrd", g + "/test-initramfs.cpio",
    "-append", f"console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 pci=off nomodule runm.test=echo:{n}"],
    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
res = {}
def conn():
    while True:
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            s.connect((3, 5000)); return s
        except OSError:
            s.close(); time.sleep(0.05)
def work(i):
    s = conn(); data = os.urandom(size); got = []
    def w():
        s.sendall(data); s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=w); t.start()
    while True:
        b = s.recv(65536)
        if not b: break
        got.append(b)
    t.join(); g = b"".join(got)
    res[i] = (len(g), g == data)
t0 = time.time()
ts = [threading.Thread(target=work, args=(i,)) for i in range(n)]
[t.start() for t in ts]; [t.join(timeout=400) for t in ts]
print("elapsed", time.time() - t0)
try:
    out = p.communicate(timeout=60)[0].decode(errors="replace")
except Exception:
    p.kill(); out = p.communicate()[0].decode(errors="replace")
print("host received:", sorted(set(res.values())), "streams", len(res))
print("\n".join(l for l in out.splitlines() if "result" in l or "WARN" in l or "ERROR" in l))
