//! Putting the kernel, the initrd and the command line into guest memory.
//!
//! Kernels are ELF vmlinux (entered through PVH when the image carries the Xen PVH note, else
//! through the 64-bit Linux boot protocol) or bzImage (64-bit entry at load address + 0x200).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::bootparam::setup_header;
use linux_loader::elf::{Elf64_Ehdr, Elf64_Nhdr, Elf64_Phdr, PT_NOTE};
use linux_loader::loader::{BzImage, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress};

use crate::memory::GuestMemory;
use crate::x86_64::layout::{CMDLINE_START, HIMEM_START, MMIO_GAP_START, PAGE_SIZE};
use crate::x86_64::regs::EntryPoint;

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const BZIMAGE_MAGIC_OFFSET: u64 = 0x202;
const BZIMAGE_MAGIC: [u8; 4] = *b"HdrS";
/// The 64-bit entry point sits 0x200 bytes into the protected-mode kernel.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const XLF_KERNEL_64: u16 = 1;
/// The first boot protocol version that defines xloadflags.
const BOOT_PROTOCOL_64BIT: u16 = 0x20c;
/// ELF notes whose owner is "Linux" mark a Linux vmlinux.
const LINUX_NOTE_OWNER: &[u8] = b"Linux\0";

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
    /// cannot copy the initrd into guest memory
    InitrdCopy,
    /// cannot write the command line into guest memory
    CmdlineCopy,
}

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

/// A kernel in guest memory.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: EntryPoint,
    /// First byte past the kernel.
    pub end: u64,
    /// The bzImage setup header, which the zero page must carry.
    pub setup_header: Option<setup_header>,
}

fn open(what: &'static str, path: &Path) -> Result<File, LoaderError> {
    File::open(path).map_err(|source| LoaderError::Open {
        what,
        path: path.into(),
        source,
    })
}

fn read_at<T: ByteValued + Default>(file: &mut File, offset: u64) -> io::Result<T> {
    let mut value = T::default();
    file.seek(SeekFrom::Start(offset))?;
    file.read_exact(value.as_mut_slice())?;
    Ok(value)
}

/// Whether any PT_NOTE segment of an ELF file holds a note owned by "Linux".
fn has_linux_note(file: &mut File) -> io::Result<bool> {
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
        while offset.saturating_add(size_of::<Elf64_Nhdr>() as u64) <= end {
            let note: Elf64_Nhdr = read_at(file, offset)?;
            let name_at = offset + size_of::<Elf64_Nhdr>() as u64;
            if note.n_namesz as usize == LINUX_NOTE_OWNER.len() {
                let mut name = [0u8; LINUX_NOTE_OWNER.len()];
                file.seek(SeekFrom::Start(name_at))?;
                file.read_exact(&mut name)?;
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
    let mut file = open("kernel", path)?;
    let read_err = |source| LoaderError::Read {
        path: path.into(),
        source,
    };
    let mut magic = [0u8; 4];
    if file.read_exact(&mut magic).is_ok() && magic == ELF_MAGIC {
        let is_linux = has_linux_note(&mut file).map_err(read_err)?;
        return Ok(KernelInfo {
            format: KernelFormat::Elf,
            is_linux,
        });
    }
    let hdrs = file
        .seek(SeekFrom::Start(BZIMAGE_MAGIC_OFFSET))
        .and_then(|_| file.read_exact(&mut magic));
    if hdrs.is_ok() && magic == BZIMAGE_MAGIC {
        return Ok(KernelInfo {
            format: KernelFormat::BzImage,
            is_linux: true,
        });
    }
    Err(LoaderError::UnknownFormat { path: path.into() })
}

/// Loads the kernel at `path` and works out its entry point.
pub fn load_kernel(
    mem: &GuestMemory,
    path: &Path,
    format: KernelFormat,
) -> Result<LoadedKernel, LoaderError> {
    let mut file = open("kernel", path)?;
    let highmem = Some(GuestAddress(HIMEM_START));
    let load_err = |source| LoaderError::Load {
        path: path.into(),
        source,
    };
    match format {
        KernelFormat::Elf => {
            let result = Elf::load(mem, None, &mut file, highmem).map_err(load_err)?;
            let entry = match result.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(addr) => EntryPoint::Pvh(addr.0),
                _ => EntryPoint::Linux64(result.kernel_load.0),
            };
            Ok(LoadedKernel {
                entry,
                end: result.kernel_end,
                setup_header: None,
            })
        }
        KernelFormat::BzImage => {
            let result = BzImage::load(mem, None, &mut file, highmem).map_err(load_err)?;
            let header = result.setup_header.unwrap_or_default();
            if header.version < BOOT_PROTOCOL_64BIT || header.xloadflags & XLF_KERNEL_64 == 0 {
                return Err(LoaderError::No64BitEntry {
                    path: path.into(),
                    version: header.version,
                });
            }
            Ok(LoadedKernel {
                entry: EntryPoint::Linux64(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
                end: result.kernel_end,
                setup_header: Some(header),
            })
        }
    }
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

/// An archive appended to an initrd starts at a multiple of this from the initrd's start, with
/// zero bytes between: Linux's initramfs unpacker looks for the next archive only there
/// (`guest_init::protocol::spec_transport` explains why).
const APPENDED_ARCHIVE_ALIGN: u64 = 4;

/// Copies the initrd file (if any) below `top`, above `kernel_end`, followed by `appended` at
/// the file's next 4-byte boundary; returns the initrd's address and size (file, padding and
/// `appended`), or None when there is neither a file nor appended bytes.
pub fn load_initrd(
    mem: &GuestMemory,
    path: Option<&Path>,
    appended: &[u8],
    kernel_end: u64,
    top: u64,
) -> Result<Option<(u64, u64)>, LoaderError> {
    let file = match path {
        Some(path) => {
            let file = open("initrd", path)?;
            let size = file
                .metadata()
                .map_err(|source| LoaderError::ReadInitrd {
                    path: path.into(),
                    source,
                })?
                .len();
            if size == 0 {
                return Err(LoaderError::EmptyInitrd { path: path.into() });
            }
            Some((path, file, size))
        }
        None if appended.is_empty() => return Ok(None),
        None => None,
    };
    let file_size = file.as_ref().map_or(0, |(_, _, size)| *size);
    let appended_at = match appended.is_empty() {
        true => file_size,
        false => file_size.next_multiple_of(APPENDED_ARCHIVE_ALIGN),
    };
    let size = appended_at + appended.len() as u64;
    let addr =
        initrd_address(size, kernel_end, top).ok_or_else(|| LoaderError::InitrdTooLarge {
            path: path.map_or_else(|| "(appended archive only)".into(), Path::to_path_buf),
            size,
            kernel_end,
            top,
        })?;
    if let Some((_, mut file, file_size)) = file {
        mem.read_exact_volatile_from(GuestAddress(addr), &mut file, file_size as usize)
            .map_err(|_| LoaderError::InitrdCopy)?;
    }
    let padding = [0u8; APPENDED_ARCHIVE_ALIGN as usize];
    mem.write_slice(
        &padding[..(appended_at - file_size) as usize],
        GuestAddress(addr + file_size),
    )
    .and_then(|()| mem.write_slice(appended, GuestAddress(addr + appended_at)))
    .map_err(|_| LoaderError::InitrdCopy)?;
    Ok(Some((addr, size)))
}

/// Writes the NUL-terminated command line (already validated for length) at its fixed address.
pub fn load_cmdline(mem: &GuestMemory, cmdline: &str) -> Result<(), LoaderError> {
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(CMDLINE_START))
        .map_err(|_| LoaderError::CmdlineCopy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_goes_to_the_top_page_aligned() {
        assert_eq!(
            initrd_address(0x1800, 0x20_0000, 0x800_0000),
            Some(0x7ff_e000)
        );
        assert_eq!(
            initrd_address(0x1000, 0x20_0000, 0x800_0000),
            Some(0x7ff_f000)
        );
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        assert_eq!(initrd_address(0x700_0000, 0x200_0000, 0x800_0000), None);
        assert_eq!(initrd_address(0x900_0000, 0, 0x800_0000), None);
        // Exactly filling the space between kernel and top is fine.
        assert_eq!(
            initrd_address(0x600_0000, 0x200_0000, 0x800_0000),
            Some(0x200_0000)
        );
    }

    #[test]
    fn initrd_top_respects_the_mmio_gap_and_initrd_addr_max() {
        assert_eq!(initrd_top(128 << 20, None), 128 << 20);
        assert_eq!(initrd_top(8 << 30, None), MMIO_GAP_START);
        let header = setup_header {
            initrd_addr_max: 0x37ff_ffff,
            ..Default::default()
        };
        assert_eq!(initrd_top(2 << 30, Some(&header)), 0x3800_0000);
    }

    #[test]
    fn unknown_formats_are_named() {
        let dir = std::env::temp_dir().join(format!("tessera-loader-{}", std::process::id()));
        std::fs::write(&dir, b"not a kernel at all").unwrap();
        let err = inspect_kernel(&dir).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("is neither an ELF vmlinux nor a bzImage"),
            "{err}"
        );
        std::fs::remove_file(&dir).unwrap();
        let err = inspect_kernel(Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot open kernel /nonexistent/vmlinux"),
            "{err}"
        );
    }

    #[test]
    fn appended_bytes_follow_the_initrd_at_its_next_4_byte_boundary() {
        let mem = crate::memory::create(8).unwrap();
        let path = std::env::temp_dir().join(format!("tessera-initrd-{}", std::process::id()));
        std::fs::write(&path, [0xaa; 5]).unwrap();
        let top = 8 << 20;
        let loaded = load_initrd(&mem, Some(&path), b"0707", 0x20_0000, top);
        std::fs::remove_file(&path).unwrap();
        let (addr, size) = loaded.unwrap().unwrap();
        assert_eq!((addr % PAGE_SIZE, size), (0, 12));
        let mut buf = [0xffu8; 12];
        mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
        assert_eq!(&buf, b"\xaa\xaa\xaa\xaa\xaa\x00\x00\x000707");
        // The archive alone is the initrd; nothing at all is none.
        assert_eq!(
            load_initrd(&mem, None, b"0707", 0x20_0000, top).unwrap(),
            Some((top - PAGE_SIZE, 4))
        );
        assert_eq!(load_initrd(&mem, None, b"", 0x20_0000, top).unwrap(), None);
    }

    #[test]
    fn cmdline_is_nul_terminated_at_its_address() {
        let mem = crate::memory::create(8).unwrap();
        load_cmdline(&mem, "console=ttyS0").unwrap();
        let mut buf = [0xffu8; 14];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }
}
