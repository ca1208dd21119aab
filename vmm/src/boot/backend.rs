//! Launch backends: what applies a [`BootPlan`] to guest memory.
//!
//! [`Plain`] writes every piece where the plan says (files are read straight into guest
//! memory, with no copy in between). [`Recording`] writes nothing and keeps every address and
//! its bytes: the reference for what a measuring backend (SEV-SNP, TDX) is handed, and for
//! tests. A backend sees the pieces in plan order; later pieces win where pieces overlap.

use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use linux_loader::loader::{bzimage, elf, Error as KernelError};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use super::{BootPlan, KernelFormat, Piece, PieceData, PieceKind};
use crate::memory::GuestMemory;

#[derive(Debug, thiserror::Error, displaydoc::Display)]
pub enum LaunchError {
    /// cannot load kernel {path}: {source}
    Kernel { path: PathBuf, source: KernelError },
    /// cannot copy the initrd into guest memory
    Initrd,
    /// cannot write the command line into guest memory
    Cmdline,
    /// cannot write the MP table to guest memory
    MpTable,
    /// cannot write the {0} to guest memory
    Write(&'static str),
    /// cannot read {path} for the boot: {source}
    Read { path: PathBuf, source: io::Error },
}

/// Applies a boot plan to guest memory.
pub trait LaunchBackend {
    fn apply(&mut self, plan: &BootPlan, mem: &GuestMemory) -> Result<(), LaunchError>;
}

/// The error for a piece that cannot be put into guest memory: the messages Tessera gave
/// before the boot became a plan.
fn write_error(piece: &Piece) -> LaunchError {
    match piece.kind {
        PieceKind::Kernel(format) => {
            let path = match &piece.data {
                PieceData::File(range) => range.file.path().to_path_buf(),
                PieceData::Bytes(_) => PathBuf::new(),
            };
            let source = match format {
                KernelFormat::Elf => KernelError::Elf(elf::Error::ReadKernelImage),
                KernelFormat::BzImage => {
                    KernelError::Bzimage(bzimage::Error::ReadBzImageCompressedKernel)
                }
            };
            LaunchError::Kernel { path, source }
        }
        PieceKind::Initrd | PieceKind::InitrdAppendix => LaunchError::Initrd,
        PieceKind::Cmdline => LaunchError::Cmdline,
        PieceKind::MpTable => LaunchError::MpTable,
        PieceKind::ZeroPage => LaunchError::Write("zero page"),
        PieceKind::PvhStartInfo => LaunchError::Write("PVH start info"),
        PieceKind::PvhMemmap => LaunchError::Write("PVH memory map"),
        PieceKind::PvhModlist => LaunchError::Write("PVH module list"),
        PieceKind::Gdt => LaunchError::Write("GDT"),
        PieceKind::Idt => LaunchError::Write("IDT"),
        PieceKind::PageTables => LaunchError::Write("page tables"),
    }
}

/// Writes the plan into guest memory: today's boot.
#[derive(Debug, Default, Clone, Copy)]
pub struct Plain;

impl Plain {
    fn write(piece: &Piece, mem: &GuestMemory) -> Option<()> {
        let addr = GuestAddress(piece.addr);
        match &piece.data {
            PieceData::Bytes(bytes) => mem.write_slice(bytes, addr).ok(),
            PieceData::File(range) => {
                let len = usize::try_from(range.len).ok()?;
                let mut file = range.file.file();
                file.seek(SeekFrom::Start(range.offset)).ok()?;
                mem.read_exact_volatile_from(addr, &mut file, len).ok()
            }
        }
    }
}

impl LaunchBackend for Plain {
    fn apply(&mut self, plan: &BootPlan, mem: &GuestMemory) -> Result<(), LaunchError> {
        for piece in &plan.pieces {
            Self::write(piece, mem).ok_or_else(|| write_error(piece))?;
        }
        Ok(())
    }
}

/// One piece as a backend was given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: PieceKind,
    pub addr: u64,
    pub bytes: Vec<u8>,
}

/// Keeps every (address, bytes) it is given, in order, and writes nothing.
#[derive(Debug, Default)]
pub struct Recording {
    pub records: Vec<Record>,
}

impl LaunchBackend for Recording {
    fn apply(&mut self, plan: &BootPlan, mem: &GuestMemory) -> Result<(), LaunchError> {
        for piece in &plan.pieces {
            // What Plain could not write is refused here too, before anything is allocated.
            let fits = usize::try_from(piece.len())
                .is_ok_and(|len| mem.check_range(GuestAddress(piece.addr), len));
            if !fits {
                return Err(write_error(piece));
            }
            let bytes = match &piece.data {
                PieceData::Bytes(bytes) => bytes.clone(),
                PieceData::File(range) => {
                    let read_err = |source| LaunchError::Read {
                        path: range.file.path().to_path_buf(),
                        source,
                    };
                    // The file's own length bounds the allocation, not a size it claims.
                    let file_len = range.file.file().metadata().map_err(read_err)?.len();
                    if range
                        .offset
                        .checked_add(range.len)
                        .is_none_or(|end| end > file_len)
                    {
                        return Err(read_err(io::Error::from(io::ErrorKind::UnexpectedEof)));
                    }
                    let len = usize::try_from(range.len)
                        .map_err(|_| read_err(io::Error::other("range larger than memory")))?;
                    let mut bytes = vec![0; len];
                    range
                        .file
                        .file()
                        .read_exact_at(&mut bytes, range.offset)
                        .map_err(read_err)?;
                    bytes
                }
            };
            self.records.push(Record {
                kind: piece.kind,
                addr: piece.addr,
                bytes,
            });
        }
        Ok(())
    }
}
