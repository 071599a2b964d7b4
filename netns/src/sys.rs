//! The crate's only `unsafe` code: one `ioctl(2)` that nix and socket2 do not wrap.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The `CLONE_NEW*` type of the namespace behind `fd` (`ioctl(NS_GET_NSTYPE)`).
///
/// Call it only on a descriptor already known to be an nsfs file (`fstatfs`), so
/// the request number cannot reach the ioctl handler of some other file type.
pub(crate) fn namespace_type(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    // SAFETY: NS_GET_NSTYPE takes no argument pointer; it only reads the namespace
    // behind `fd`, which the borrow keeps open for the duration of the call. On a
    // descriptor that is not an nsfs file the kernel returns an error (ENOTTY).
    let ret = unsafe { libc::ioctl(fd.as_raw_fd(), libc::NS_GET_NSTYPE) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
