//! Choosing the accelerator: KVM when it really runs guest code, else TCG emulation.
//!
//! `/dev/kvm` can exist and open yet fail on the first FPU instruction (nested
//! virtualisation without full support). So KVM is proven by booting a 64 KiB
//! "firmware" that runs `fwait; fninit` and then reports through isa-debug-exit.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// What `isa-debug-exit` turns our probe's `out 0xf4, 0x31` into: (0x31 << 1) | 1.
const PROBE_EXIT: i32 = 99;

/// A 64 KiB firmware image whose reset vector runs the probe.
fn probe_firmware() -> Vec<u8> {
    let mut b = vec![0xf4u8; 65536]; // hlt everywhere
                                     // fwait; fninit; mov al, 0x31; out 0xf4, al; hlt
    let code = [0x9b, 0xdb, 0xe3, 0xb0, 0x31, 0xe6, 0xf4, 0xf4];
    let at = b.len() - 16;
    b[at..at + code.len()].copy_from_slice(&code);
    b
}

/// True when `/dev/kvm` opens for reading and writing (the arm64 check: the probe
/// below is x86 code).
pub fn kvm_opens() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// True when QEMU with KVM runs the probe to its end within a few seconds.
pub fn kvm_works() -> bool {
    if !kvm_opens() {
        return false;
    }
    let Ok(dir) = tempfile::tempdir() else {
        return false;
    };
    let fw = dir.path().join("probe.bin");
    if std::fs::write(&fw, probe_firmware()).is_err() {
        return false;
    }
    let child = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "q35",
            "-accel",
            "kvm",
            "-display",
            "none",
            "-nodefaults",
        ])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-bios"])
        .arg(&fw)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code() == Some(PROBE_EXIT);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_code_sits_at_the_reset_vector() {
        let fw = super::probe_firmware();
        assert_eq!(fw.len(), 65536);
        assert_eq!(&fw[65536 - 16..65536 - 13], &[0x9b, 0xdb, 0xe3]);
    }
}
