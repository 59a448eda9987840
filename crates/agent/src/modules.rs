//! Loading the kernel modules the builder put in the initramfs, in dependency order.

use crate::log::say;
use std::ffi::CString;

/// The list the builder writes: one module path per line, dependencies first.
pub const LIST: &str = "/etc/oneimage/modules";

/// Loads every listed module; one that fails is logged and skipped (it may be built in).
pub fn load_listed() {
    let Ok(text) = std::fs::read_to_string(LIST) else {
        say(&format!(
            "no module list at {LIST}; relying on built-in drivers"
        ));
        return;
    };
    let empty = CString::new("").expect("no NUL");
    let (mut loaded, mut present) = (0, 0);
    for path in text.lines().filter(|l| !l.is_empty()) {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) => {
                say(&format!("module {path}: {e}"));
                continue;
            }
        };
        match rustix::system::finit_module(&file, &empty, 0) {
            Ok(()) => loaded += 1,
            Err(rustix::io::Errno::EXIST) => present += 1,
            Err(e) => say(&format!("module {path}: {e}")),
        }
    }
    say(&format!(
        "loaded {loaded} modules ({present} already present)"
    ));
}
