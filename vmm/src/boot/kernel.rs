//! Kernel images: telling ELF vmlinux from bzImage, and planning where their bytes go.
//!
//! Kernels are ELF vmlinux (entered through PVH when the image carries the Xen PVH note, else
//! through the 64-bit Linux boot protocol) or bzImage (64-bit entry at load address + 0x200).
//!
//! Why Tessera parses these formats itself: linux-loader's `Elf::load` and `BzImage::load`
//! read the headers and copy the image into guest memory in one step; they have no "plan only"
//! mode that says what would go where. A measured launch (SEV-SNP, TDX) must see every byte and
//! its address before anything is written, so this module reads the ELF program headers and the
//! bzImage setup header with linux-loader's own binding types and produces file ranges instead.
//! It mirrors linux-loader 0.14's checks one by one, and reports a failed check with the same
//! `linux_loader::loader::Error` value, so a single fault gives the message users saw before
//! (an image with several faults may now report a later one: the whole plan is checked before
//! anything is written). Tessera's own checks: the ELF must be for x86_64 and must have a
//! loadable segment, and a PT_NOTE segment is read for at most `MAX_NOTES` notes.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use linux_loader::bootparam::setup_header;
use linux_loader::elf::{
    Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr, EI_DATA, EI_MAG0, EI_MAG1, EI_MAG2, EI_MAG3, ELFDATA2LSB,
    ELFMAG0, ELFMAG1, ELFMAG2, ELFMAG3, EM_X86_64, PT_LOAD, PT_NOTE,
};
use linux_loader::loader::{bzimage, elf, Error as KernelError};
use vm_memory::ByteValued;

use super::{BootFile, FileRange, LoaderError, Piece, PieceData, PieceKind};
use crate::x86_64::layout::HIMEM_START;
use crate::x86_64::regs::EntryPoint;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
/// Where the setup header starts in a bzImage.
const SETUP_HEADER_OFFSET: u64 = 0x1f1;
const HDRS_MAGIC: u32 = 0x5372_6448;
/// The oldest boot protocol linux-loader accepts.
const BOOT_PROTOCOL_MIN: u16 = 0x200;
/// loadflags bit 0: the protected-mode kernel loads at 1 MiB.
const LOADED_HIGH: u8 = 1;
const SECTOR_SIZE: usize = 512;
/// The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;
/// The first boot protocol version that defines xloadflags.
const BOOT_PROTOCOL_64BIT: u16 = 0x20c;
/// ELF notes whose owner is "Linux" mark a Linux vmlinux.
const LINUX_NOTE_OWNER: &[u8] = b"Linux\0";
/// The Xen note that carries the 32-bit PVH entry point.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
const XEN_NOTE_OWNER: [u8; 4] = *b"Xen\0";
const ELFNOTE_ALIGN: u64 = 4;

/// The kernel image formats Tessera boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    Elf,
    BzImage,
}

/// What the loader learned about a kernel without loading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelInfo {
    pub format: KernelFormat,
    /// A Linux kernel (any bzImage; an ELF with a "Linux" note).
    pub is_linux: bool,
}

/// Where a kernel's bytes go, and what the rest of the boot needs to know about it.
#[derive(Debug)]
pub struct KernelPlan {
    /// The ELF's loadable segments, or the bzImage's protected-mode kernel, as file ranges.
    pub pieces: Vec<Piece>,
    pub entry: EntryPoint,
    /// First byte past the kernel.
    pub end: u64,
    /// The bzImage setup header, which the zero page must carry.
    pub setup_header: Option<setup_header>,
}

/// The name of an ELF `e_machine`, for the error that refuses it.
fn machine_name(machine: u16) -> &'static str {
    match machine {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "S390",
        40 => "ARM",
        50 => "IA-64",
        183 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "unknown",
    }
}

fn read_at<T: ByteValued + Default>(mut file: &File, offset: u64) -> io::Result<T> {
    let mut value = T::default();
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(value.as_mut_slice())?;
    Ok(value)
}

/// Whether any PT_NOTE segment of an ELF file holds a note owned by "Linux".
fn has_linux_note(file: &File) -> io::Result<bool> {
    let ehdr: Elf64_Ehdr = read_at(file, 0)?;
    for i in 0..u64::from(ehdr.e_phnum) {
        let phdr: Elf64_Phdr = read_at(
            file,
            ehdr.e_phoff
                .saturating_add(i * size_of::<Elf64_Phdr>() as u64),
        )?;
        if phdr.p_type != PT_NOTE {
            continue;
        }
        let mut offset = phdr.p_offset;
        let end = phdr.p_offset.saturating_add(phdr.p_filesz);
        let mut notes = 0;
        while offset.saturating_add(size_of::<Elf64_Nhdr>() as u64) <= end && notes < MAX_NOTES {
            notes += 1;
            let note: Elf64_Nhdr = read_at(file, offset)?;
            let name_at = offset + size_of::<Elf64_Nhdr>() as u64;
            if note.n_namesz as usize == LINUX_NOTE_OWNER.len() {
                let mut name = [0u8; LINUX_NOTE_OWNER.len()];
                let mut reader = file;
                reader.seek(SeekFrom::Start(name_at))?;
                reader.read_exact(&mut name)?;
                if name == LINUX_NOTE_OWNER {
                    return Ok(true);
                }
            }
            let align4 = |n: u32| u64::from(n).div_ceil(4) * 4;
            offset = name_at + align4(note.n_namesz) + align4(note.n_descsz);
        }
    }
    Ok(false)
}

/// Identifies the kernel's format and whether it is Linux.
pub fn inspect_kernel(path: &Path) -> Result<KernelInfo, LoaderError> {
    let file = BootFile::open("kernel", path)?;
    let read_err = |source| LoaderError::Read {
        path: path.into(),
        source,
    };
    let mut reader = file.file();
    let mut magic = [0u8; 4];
    if reader.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC {
        let is_linux = has_linux_note(file.file()).map_err(read_err)?;
        return Ok(KernelInfo {
            format: KernelFormat::Elf,
            is_linux,
        });
    }
    let hdrs = reader
        .seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))
        .and_then(|_| reader.read_exact(&mut magic));
    if hdrs.is_ok() && magic == BZIMAGE_MAGIC {
        return Ok(KernelInfo {
            format: KernelFormat::BzImage,
            is_linux: true,
        });
    }
    Err(LoaderError::UnknownFormat { path: path.into() })
}

/// Plans the kernel at `path`: its pieces, entry point and end.
pub fn plan_kernel(path: &Path, format: KernelFormat) -> Result<KernelPlan, LoaderError> {
    let file = BootFile::open("kernel", path)?;
    let load_err = |source: KernelError| LoaderError::Load {
        path: path.into(),
        source,
    };
    match format {
        KernelFormat::Elf => plan_elf(file).map_err(|e| match e {
            ElfRefusal::Loader(source) => load_err(source),
            ElfRefusal::Machine(machine) => LoaderError::WrongMachine {
                path: path.into(),
                machine,
                name: machine_name(machine),
            },
            ElfRefusal::NoLoadableSegment => LoaderError::NoLoadableSegment { path: path.into() },
        }),
        KernelFormat::BzImage => {
            let kernel = plan_bzimage(file).map_err(load_err)?;
            let header = kernel.setup_header.unwrap_or_default();
            if header.version < BOOT_PROTOCOL_64BIT || header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::No64BitEntry {
                    path: path.into(),
                    version: header.version,
                });
            }
            Ok(kernel)
        }
    }
}

/// Why an ELF cannot be planned: one of linux-loader's checks, or one of Tessera's.
enum ElfRefusal {
    Loader(KernelError),
    Machine(u16),
    NoLoadableSegment,
}

impl From<elf::Error> for ElfRefusal {
    fn from(e: elf::Error) -> Self {
        Self::Loader(KernelError::Elf(e))
    }
}

impl From<KernelError> for ElfRefusal {
    fn from(e: KernelError) -> Self {
        Self::Loader(e)
    }
}

/// linux-loader's `Elf::validate_header`.
fn validate_elf_header(ehdr: &Elf64_Ehdr) -> Result<(), elf::Error> {
    if ehdr.e_ident[EI_MAG0] != ELFMAG0
        || ehdr.e_ident[EI_MAG1] != ELFMAG1
        || ehdr.e_ident[EI_MAG2] != ELFMAG2
        || ehdr.e_ident[EI_MAG3] != ELFMAG3
    {
        return Err(elf::Error::InvalidElfMagicNumber);
    }
    if ehdr.e_ident[EI_DATA] != ELFDATA2LSB {
        return Err(elf::Error::BigEndianElfOnLittle);
    }
    if ehdr.e_phentsize as usize != size_of::<Elf64_Phdr>() {
        return Err(elf::Error::InvalidProgramHeaderSize);
    }
    if (ehdr.e_phoff as usize) < size_of::<Elf64_Ehdr>() {
        return Err(elf::Error::InvalidProgramHeaderOffset);
    }
    Ok(())
}

/// linux-loader's `Elf::load` with no kernel offset and high memory at 1 MiB, as a plan; plus
/// the machine and loadable-segment checks.
fn plan_elf(file: Arc<BootFile>) -> Result<KernelPlan, ElfRefusal> {
    let mut reader = file.file();
    reader.rewind().map_err(|_| elf::Error::SeekElfStart)?;
    let mut ehdr = Elf64_Ehdr::default();
    reader
        .read_exact(ehdr.as_mut_slice())
        .map_err(|_| elf::Error::ReadElfHeader)?;
    validate_elf_header(&ehdr)?;
    if ehdr.e_machine != EM_X86_64 {
        return Err(ElfRefusal::Machine(ehdr.e_machine));
    }
    if ehdr.e_entry < HIMEM_START {
        return Err(elf::Error::InvalidEntryAddress.into());
    }

    reader
        .seek(SeekFrom::Start(ehdr.e_phoff))
        .map_err(|_| elf::Error::SeekProgramHeader)?;
    let mut phdrs = Vec::with_capacity(usize::from(ehdr.e_phnum));
    for _ in 0..ehdr.e_phnum {
        let mut phdr = Elf64_Phdr::default();
        reader
            .read_exact(phdr.as_mut_slice())
            .map_err(|_| elf::Error::ReadProgramHeader)?;
        phdrs.push(phdr);
    }

    // linux-loader's default: no PT_NOTE seen, the PVH entry is "ignored".
    let mut pvh_entry = None;
    let mut pieces = Vec::new();
    let mut end = 0u64;
    for phdr in phdrs {
        if phdr.p_type != PT_LOAD || phdr.p_filesz == 0 {
            if phdr.p_type == PT_NOTE {
                // As in linux-loader, the last note segment decides.
                pvh_entry = pvh_note(&phdr, file.file())?;
            }
            continue;
        }
        pieces.push(Piece {
            kind: PieceKind::Kernel(KernelFormat::Elf),
            addr: phdr.p_paddr,
            data: PieceData::File(FileRange {
                file: file.clone(),
                offset: phdr.p_offset,
                len: phdr.p_filesz,
            }),
        });
        let segment_end = phdr
            .p_paddr
            .checked_add(phdr.p_memsz)
            .ok_or(KernelError::MemoryOverflow)?;
        end = end.max(segment_end);
    }
    if pieces.is_empty() {
        return Err(ElfRefusal::NoLoadableSegment);
    }
    let entry = match pvh_entry {
        Some(addr) => EntryPoint::Pvh(addr),
        None => EntryPoint::Linux64(ehdr.e_entry),
    };
    Ok(KernelPlan {
        pieces,
        entry,
        end,
        setup_header: None,
    })
}

/// The most notes read in one PT_NOTE segment (Linux's vmlinux has a few dozen).
const MAX_NOTES: u32 = 4096;

fn align_up(value: u64) -> u64 {
    value.div_ceil(ELFNOTE_ALIGN) * ELFNOTE_ALIGN
}

/// linux-loader's `parse_elf_note`: the PVH entry point of a PT_NOTE segment, if it has one.
fn pvh_note(phdr: &Elf64_Phdr, mut reader: &File) -> Result<Option<u64>, elf::Error> {
    reader
        .seek(SeekFrom::Start(phdr.p_offset))
        .map_err(|_| elf::Error::SeekNoteHeader)?;
    let mut nhdr = Elf64_Nhdr::default();
    let mut read_size: u64 = 0;
    let nhdr_size = size_of::<Elf64_Nhdr>() as u64;
    let mut notes = 0;
    while read_size < phdr.p_filesz {
        // A real kernel has a few dozen notes; a crafted file must not keep the launch busy.
        notes += 1;
        if notes > MAX_NOTES {
            return Ok(None);
        }
        reader
            .read_exact(nhdr.as_mut_slice())
            .map_err(|_| elf::Error::ReadNoteHeader)?;
        if nhdr.n_type == XEN_ELFNOTE_PHYS32_ENTRY && nhdr.n_namesz as usize == XEN_NOTE_OWNER.len()
        {
            let mut name = [0u8; XEN_NOTE_OWNER.len()];
            reader
                .read_exact(&mut name)
                .map_err(|_| elf::Error::ReadNoteHeader)?;
            if name == XEN_NOTE_OWNER {
                break;
            }
        }
        // Both aligned sizes fit in u32 + 3, so this sum cannot overflow before it is checked.
        read_size = read_size
            .checked_add(nhdr_size + align_up(u64::from(nhdr.n_namesz)))
            .and_then(|size| size.checked_add(align_up(u64::from(nhdr.n_descsz))))
            .ok_or(elf::Error::Overflow)?;
        let next = phdr
            .p_offset
            .checked_add(read_size)
            .ok_or(elf::Error::Overflow)?;
        reader
            .seek(SeekFrom::Start(next))
            .map_err(|_| elf::Error::SeekNoteHeader)?;
    }
    if read_size >= phdr.p_filesz {
        return Ok(None);
    }
    let skip = align_up(u64::from(nhdr.n_namesz)) as i64 - XEN_NOTE_OWNER.len() as i64;
    reader
        .seek(SeekFrom::Current(skip))
        .map_err(|_| elf::Error::SeekNoteHeader)?;
    if (nhdr.n_descsz as usize) < size_of::<u32>() {
        return Err(elf::Error::InvalidPvhNote);
    }
    let mut addr = [0u8; 4];
    reader
        .read_exact(&mut addr)
        .map_err(|_| elf::Error::ReadNoteHeader)?;
    Ok(Some(u64::from(u32::from_le_bytes(addr))))
}

/// linux-loader's `BzImage::load` with no kernel offset and high memory at 1 MiB, as a plan.
fn plan_bzimage(file: Arc<BootFile>) -> Result<KernelPlan, KernelError> {
    let mut reader = file.file();
    let file_len = reader
        .seek(SeekFrom::End(0))
        .map_err(|_| bzimage::Error::SeekBzImageEnd)?;
    reader
        .seek(SeekFrom::Start(SETUP_HEADER_OFFSET))
        .map_err(|_| bzimage::Error::SeekBzImageHeader)?;
    let mut header = setup_header::default();
    read_up_to(&mut reader, header.as_mut_slice())
        .map_err(|_| bzimage::Error::ReadBzImageHeader)?;
    if header.header != HDRS_MAGIC {
        return Err(bzimage::Error::InvalidBzImage.into());
    }
    if header.version < BOOT_PROTOCOL_MIN || header.loadflags & LOADED_HIGH == 0 {
        return Err(bzimage::Error::InvalidBzImage.into());
    }
    let setup_sects = match header.setup_sects {
        0 => 4,
        n => usize::from(n),
    };
    let setup_size = (setup_sects + 1) * SECTOR_SIZE;
    let kernel_size = file_len
        .checked_sub(setup_size as u64)
        .ok_or(bzimage::Error::Underflow)?;
    let load_addr = u64::from(header.code32_start);
    if load_addr < HIMEM_START {
        return Err(KernelError::InvalidKernelStartAddress);
    }
    // linux-loader writes the load address back; with no offset it is code32_start itself.
    header.code32_start = load_addr as u32;
    let end = load_addr
        .checked_add(kernel_size)
        .ok_or(KernelError::MemoryOverflow)?;
    let piece = Piece {
        kind: PieceKind::Kernel(KernelFormat::BzImage),
        addr: load_addr,
        data: PieceData::File(FileRange {
            file,
            offset: setup_size as u64,
            len: kernel_size,
        }),
    };
    Ok(KernelPlan {
        pieces: vec![piece],
        entry: EntryPoint::Linux64(load_addr + BZIMAGE_64BIT_ENTRY_OFFSET),
        end,
        setup_header: Some(header),
    })
}

/// Fills `buf` from `reader` until it is full or the file ends (a short header reads as zeros,
/// as linux-loader's single `read_volatile` leaves it).
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
