//! The boot as a page plan: everything a launch puts into guest memory, named, with its guest
//! address and its data, before any of it is written.
//!
//! [`plan`] turns a boot source and the machine config into a [`BootPlan`]: the kernel's
//! segments (file ranges), the initrd (a file range), the command line, the MP table, the zero
//! page or the PVH start info with its memory map and module list, and the GDT, IDT and
//! identity page tables the boot vCPU's registers point at. A [`LaunchBackend`] applies the
//! plan: [`Plain`] writes it into guest memory (kernel and initrd straight from their files),
//! [`Recording`] keeps what it is given, and the SEV-SNP and TDX backends will measure and
//! encrypt the same pieces page by page. Registers are set afterwards and only on the vCPU
//! ([`crate::x86_64::regs::setup_boot_vcpu`]).

pub mod backend;
pub mod kernel;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use linux_loader::bootparam::setup_header;

pub use self::backend::{LaunchBackend, LaunchError, Plain, Record, Recording};
pub use self::kernel::{inspect_kernel, plan_kernel, KernelFormat, KernelInfo, KernelPlan};
use crate::config::{BootSource, MachineConfig};
use crate::x86_64::boot_params::{self, BootInfo, BootParamsError};
use crate::x86_64::layout::{CMDLINE_START, MMIO_GAP_START, PAGE_SIZE};
use crate::x86_64::mptable::{self, MpTableError};
use crate::x86_64::regs;
pub use crate::x86_64::regs::EntryPoint;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum LoaderError {
    /// cannot open {what} {path}: {source}
    Open {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// cannot read kernel {path}: {source}
    Read { path: PathBuf, source: io::Error },
    /// cannot read initrd {path}: {source}
    ReadInitrd { path: PathBuf, source: io::Error },
    /// {path} is neither an ELF vmlinux nor a bzImage
    UnknownFormat { path: PathBuf },
    /// cannot load kernel {path}: {source}
    Load {
        path: PathBuf,
        source: linux_loader::loader::Error,
    },
    /// kernel {path} is an ELF for machine {machine} ({name}), not x86_64
    WrongMachine {
        path: PathBuf,
        machine: u16,
        name: &'static str,
    },
    /// kernel {path} has no loadable segment
    NoLoadableSegment { path: PathBuf },
    /// bzImage {path} has no 64-bit entry point (boot protocol {version:#x}): use a 64-bit kernel
    No64BitEntry { path: PathBuf, version: u16 },
    /// initrd {path} is empty
    EmptyInitrd { path: PathBuf },
    /// initrd {path} ({size} bytes) does not fit between the kernel end ({kernel_end:#x}) and the top of usable low memory ({top:#x}): give the VM more memory
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        kernel_end: u64,
        top: u64,
    },
    /// {0}
    BootParams(#[from] BootParamsError),
    /// {0}
    MpTable(#[from] MpTableError),
    /// {0}
    Launch(#[from] LaunchError),
}

/// What a piece of the boot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceKind {
    /// An ELF loadable segment, or a bzImage's protected-mode kernel.
    Kernel(KernelFormat),
    Initrd,
    /// Bytes after the initrd file (zero padding, then the workload spec's archive).
    InitrdAppendix,
    /// The NUL-terminated kernel command line.
    Cmdline,
    MpTable,
    /// The Linux `boot_params`.
    ZeroPage,
    PvhStartInfo,
    PvhMemmap,
    PvhModlist,
    Gdt,
    Idt,
    /// Identity page tables for the 64-bit entry (PML4, PDPT or PD).
    PageTables,
}

/// A file a plan reads from (the kernel, the initrd), open for as long as the plan lives.
#[derive(Debug)]
pub struct BootFile {
    path: PathBuf,
    file: File,
}

impl BootFile {
    /// Opens the `what` (kernel, initrd) at `path`.
    pub fn open(what: &'static str, path: &Path) -> Result<Arc<Self>, LoaderError> {
        let file = File::open(path).map_err(|source| LoaderError::Open {
            what,
            path: path.into(),
            source,
        })?;
        Ok(Arc::new(Self {
            path: path.into(),
            file,
        }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file; `&File` reads and seeks, so backends need no lock.
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// `len` bytes of `file` from `offset`.
#[derive(Debug, Clone)]
pub struct FileRange {
    pub file: Arc<BootFile>,
    pub offset: u64,
    pub len: u64,
}

/// A piece's bytes: built by the VMM, or a range of a file that a backend reads straight into
/// guest memory.
#[derive(Debug, Clone)]
pub enum PieceData {
    Bytes(Vec<u8>),
    File(FileRange),
}

/// One thing the boot puts at one guest address.
#[derive(Debug, Clone)]
pub struct Piece {
    pub kind: PieceKind,
    pub addr: u64,
    pub data: PieceData,
}

impl Piece {
    pub fn bytes(kind: PieceKind, addr: u64, bytes: Vec<u8>) -> Self {
        Self {
            kind,
            addr,
            data: PieceData::Bytes(bytes),
        }
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match &self.data {
            PieceData::Bytes(bytes) => bytes.len() as u64,
            PieceData::File(range) => range.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What goes where for one boot, in the order it is written, and how the kernel is entered.
#[derive(Debug)]
pub struct BootPlan {
    pub pieces: Vec<Piece>,
    pub entry: EntryPoint,
}

/// Plans the boot of `boot` (its kernel already inspected as `kernel`) on `machine`.
pub fn plan(
    kernel: &KernelInfo,
    boot: &BootSource,
    machine: &MachineConfig,
) -> Result<BootPlan, LoaderError> {
    let mem_size = machine.mem_size_mib << 20;
    let KernelPlan {
        mut pieces,
        entry,
        end,
        setup_header,
    } = plan_kernel(&boot.kernel_image_path, kernel.format)?;
    let top = initrd_top(mem_size, setup_header.as_ref());
    let InitrdPlan {
        pieces: initrd_pieces,
        placed: initrd,
    } = plan_initrd(boot.initrd_path.as_deref(), &boot.initrd_append, end, top)?;
    pieces.extend(initrd_pieces);
    pieces.push(cmdline(&boot.boot_args));
    pieces.push(mptable::piece(machine.vcpu_count)?);

    let e820 = boot_params::e820_map(mem_size);
    let info = BootInfo {
        cmdline_len: boot.boot_args.len(),
        initrd,
    };
    match entry {
        EntryPoint::Linux64(_) => {
            let params = boot_params::zero_page(setup_header, &info, &e820)?;
            pieces.push(boot_params::zero_page_piece(&params));
        }
        EntryPoint::Pvh(_) => pieces.extend(boot_params::pvh_start_info_pieces(&info, &e820)),
    }
    pieces.extend(regs::boot_tables(&entry));
    Ok(BootPlan { pieces, entry })
}

/// The highest page-aligned address for `size` bytes that ends at or below `top` and starts at
/// or above `kernel_end`.
pub fn initrd_address(size: u64, kernel_end: u64, top: u64) -> Option<u64> {
    let start = top.checked_sub(size)? & !(PAGE_SIZE - 1);
    (start >= kernel_end).then_some(start)
}

/// The top of memory an initrd may occupy: the end of low RAM, lowered to the kernel's
/// `initrd_addr_max` for a bzImage.
pub fn initrd_top(mem_size: u64, header: Option<&setup_header>) -> u64 {
    let low_end = mem_size.min(MMIO_GAP_START);
    match header {
        Some(h) if h.initrd_addr_max != 0 => low_end.min(u64::from(h.initrd_addr_max) + 1),
        _ => low_end,
    }
}

/// An initrd's pieces, and its address and size in guest memory (None: no initrd).
pub struct InitrdPlan {
    pub pieces: Vec<Piece>,
    pub placed: Option<(u64, u64)>,
}

/// The initrd below `top`, above `kernel_end`: the file (if any) as a file range, then
/// `appended` (if any) at the file's next 4-byte boundary, zero-padded; and the initrd's
/// address and size (file, padding and `appended`), or None when there is neither.
pub fn plan_initrd(
    path: Option<&Path>,
    appended: &[u8],
    kernel_end: u64,
    top: u64,
) -> Result<InitrdPlan, LoaderError> {
    let file = match path {
        Some(path) => {
            let file = BootFile::open("initrd", path)?;
            let size = file
                .file()
                .metadata()
                .map_err(|source| LoaderError::ReadInitrd {
                    path: path.into(),
                    source,
                })?
                .len();
            if size == 0 {
                return Err(LoaderError::EmptyInitrd { path: path.into() });
            }
            Some((file, size))
        }
        None if appended.is_empty() => {
            return Ok(InitrdPlan {
                pieces: Vec::new(),
                placed: None,
            })
        }
        None => None,
    };
    let file_size = file.as_ref().map_or(0, |(_, size)| *size);
    let appended_at = match appended.is_empty() {
        true => file_size,
        // Linux looks for the next archive only at 4-byte offsets from the initrd's start.
        false => guest_init::protocol::appended_archive_offset(file_size),
    };
    let size = appended_at + appended.len() as u64;
    let addr =
        initrd_address(size, kernel_end, top).ok_or_else(|| LoaderError::InitrdTooLarge {
            path: path.map_or_else(|| "(appended archive only)".into(), Path::to_path_buf),
            size,
            kernel_end,
            top,
        })?;
    let mut pieces = Vec::with_capacity(2);
    if let Some((file, len)) = file {
        pieces.push(Piece {
            kind: PieceKind::Initrd,
            addr,
            data: PieceData::File(FileRange {
                file,
                offset: 0,
                len,
            }),
        });
    }
    if !appended.is_empty() {
        let mut bytes = vec![0u8; (appended_at - file_size) as usize];
        bytes.extend_from_slice(appended);
        pieces.push(Piece::bytes(
            PieceKind::InitrdAppendix,
            addr + file_size,
            bytes,
        ));
    }
    Ok(InitrdPlan {
        pieces,
        placed: Some((addr, size)),
    })
}

/// The NUL-terminated command line (already validated for length) at its fixed address.
pub fn cmdline(cmdline: &str) -> Piece {
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    Piece::bytes(PieceKind::Cmdline, CMDLINE_START, bytes)
}

#[cfg(test)]
mod tests;
