//! The virtio-mmio transport, version 2 (virtio 1.2, section 4.2.2).
//!
//! vCPU threads read and write these registers; the transport keeps the driver's feature and
//! queue choices, walks the status state machine and hands a device its queues on DRIVER_OK.
//! Queue notifications normally bypass it (KVM ioeventfds on [`QUEUE_NOTIFY_OFFSET`]); a write
//! that still lands here is forwarded to the same eventfd. Interrupts leave through
//! [`MmioInterrupt`], the transport's [`VirtioInterrupt`]: one line (an irqfd) for every queue
//! and config changes, told apart by the InterruptStatus register.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use crate::virtio::{
    Activation, GuestMemory, InterruptKind, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::BusDevice;

/// Each device's register window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// The QueueNotify register, where the VMM binds ioeventfds.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "TSRA", reported as the vendor.
const VENDOR_ID: u32 = 0x4152_5354;
const CONFIG_SPACE: u64 = 0x100;

/// Interrupt status bits (InterruptStatus / InterruptACK registers).
pub const INTERRUPT_USED_RING: u32 = 1;
pub const INTERRUPT_CONFIG_CHANGE: u32 = 2;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 64;
    pub const FAILED: u32 = 128;
}

/// The device's interrupt line: a status word the transport exposes and an irqfd that raises
/// the GSI. Every queue shares the line; the driver reads InterruptStatus to learn why.
pub struct MmioInterrupt {
    status: AtomicU32,
    config_generation: AtomicU32,
    irqfd: EventFd,
}

impl MmioInterrupt {
    /// An interrupt raised by writing to `irqfd` (registered with KVM_IRQFD by the VMM).
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            config_generation: AtomicU32::new(0),
            irqfd,
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            crate::guest_error!("virtio: cannot raise interrupt: {e}");
        }
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// The InterruptACK register: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The ConfigGeneration register.
    pub fn config_generation(&self) -> u32 {
        self.config_generation.load(Ordering::SeqCst)
    }

    fn clear(&self) {
        self.status.store(0, Ordering::SeqCst);
    }

    /// The irqfd, for registering with KVM.
    pub fn irqfd(&self) -> &EventFd {
        &self.irqfd
    }
}

impl VirtioInterrupt for MmioInterrupt {
    fn trigger(&self, kind: InterruptKind) {
        match kind {
            // One line for all queues: the index only matters to transports with a vector each.
            InterruptKind::Queue(_) => self.raise(INTERRUPT_USED_RING),
            InterruptKind::Config => {
                self.config_generation.fetch_add(1, Ordering::SeqCst);
                self.raise(INTERRUPT_CONFIG_CHANGE);
            }
        }
    }
}

/// The transport for one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemory,
    interrupt: Arc<MmioInterrupt>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    queues: Vec<Queue>,
    activated: bool,
}

impl MmioTransport {
    /// The transport for `device`, raising its interrupt by writing to `irqfd` (registered with
    /// KVM_IRQFD by the VMM).
    pub fn new(mem: GuestMemory, device: Arc<Mutex<dyn VirtioDevice>>, irqfd: EventFd) -> Self {
        let queues = lock(&device)
            .queue_max_sizes()
            .iter()
            // A zero or non-power-of-two maximum is a bug in the device model; such a queue
            // stays unusable instead of taking the VMM down.
            .filter_map(|&max| Queue::new(max).ok())
            .collect();
        Self {
            device,
            mem,
            interrupt: Arc::new(MmioInterrupt::new(irqfd)),
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            queues,
            activated: false,
        }
    }

    pub fn interrupt(&self) -> &MmioInterrupt {
        &self.interrupt
    }

    /// The device's type, for logs and the kernel command line.
    pub fn device_type(&self) -> u32 {
        lock(&self.device).device_type()
    }

    fn device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        lock(&self.device)
    }

    fn offered_features(&self) -> u64 {
        self.device().avail_features() | VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// Queue registers may change only after FEATURES_OK and before DRIVER_OK, on a queue
    /// that is not ready (section 4.2.2.2 and 4.2.3.2).
    fn with_configurable_queue(&mut self, f: impl FnOnce(&mut Queue)) {
        let configurable = self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK;
        match self.selected_queue() {
            Some(queue) if configurable && !queue.ready() => f(queue),
            _ => crate::guest_debug!(
                "virtio-mmio: ignored a queue register write in the wrong state"
            ),
        }
    }

    /// QueueReady: 1 enables a configured queue; 0 always disables it before DRIVER_OK (Linux's
    /// vm_del_vq writes 0 and then checks it reads back 0, also on probe failure paths).
    fn write_queue_ready(&mut self, value: u32) {
        if value == 0 && self.status & status::DRIVER_OK == 0 {
            if let Some(queue) = self.selected_queue() {
                queue.set_ready(false);
            }
            return;
        }
        self.with_configurable_queue(|q| q.set_ready(value == 1));
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_sel as usize);
        match offset {
            0x000 => MAGIC,
            0x004 => VERSION,
            0x008 => self.device().device_type(),
            0x00c => VENDOR_ID,
            0x010 => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            0x034 => queue.map_or(0, |q| u32::from(q.max_size())),
            0x044 => queue.map_or(0, |q| u32::from(q.ready())),
            0x060 => self.interrupt.status(),
            0x070 => self.status,
            // No shared memory regions: length reads as all ones (section 4.2.2).
            0x0b0 | 0x0b4 => u32::MAX,
            0x0fc => self.interrupt.config_generation(),
            _ => {
                crate::guest_debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x014 => self.device_features_sel = value,
            0x020 => self.write_driver_features(value),
            0x024 => self.driver_features_sel = value,
            0x030 => self.queue_sel = value,
            0x038 => self.with_configurable_queue(|q| q.set_size(value as u16)),
            0x044 => self.write_queue_ready(value),
            0x050 => self.notify(value),
            0x064 => self.interrupt.ack(value),
            0x070 => self.write_status(value),
            0x080 => self.with_configurable_queue(|q| q.set_desc_table_address(Some(value), None)),
            0x084 => self.with_configurable_queue(|q| q.set_desc_table_address(None, Some(value))),
            0x090 => self.with_configurable_queue(|q| q.set_avail_ring_address(Some(value), None)),
            0x094 => self.with_configurable_queue(|q| q.set_avail_ring_address(None, Some(value))),
            0x0a0 => self.with_configurable_queue(|q| q.set_used_ring_address(Some(value), None)),
            0x0a4 => self.with_configurable_queue(|q| q.set_used_ring_address(None, Some(value))),
            0x0ac => {} // SHMSel: there are no regions to select.
            _ => crate::guest_debug!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (status::DRIVER | status::FEATURES_OK) != status::DRIVER {
            crate::guest_debug!("virtio-mmio: driver features written outside the DRIVER state");
            return;
        }
        let value = u64::from(value);
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
            _ => {}
        }
    }

    fn notify(&self, value: u32) {
        let device = self.device();
        match device.queue_events().get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    crate::guest_error!("virtio-mmio: cannot forward a queue notification: {e}");
                }
            }
            None => crate::guest_debug!("virtio-mmio: notification for missing queue {value}"),
        }
    }

    /// The status state machine: 0 resets; otherwise bits may only be added, in the order
    /// ACKNOWLEDGE, DRIVER, FEATURES_OK, DRIVER_OK (FAILED any time).
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let added = value & !self.status;
        if value & self.status != self.status {
            crate::guest_debug!(
                "virtio-mmio: driver tried to clear status bits ({:#x} -> {value:#x})",
                self.status
            );
            return;
        }
        let has = |bit| value & bit != 0;
        let in_order = (!has(status::DRIVER) || has(status::ACKNOWLEDGE))
            && (!has(status::FEATURES_OK) || has(status::DRIVER))
            && (!has(status::DRIVER_OK) || has(status::FEATURES_OK));
        if !in_order {
            crate::guest_debug!("virtio-mmio: status {value:#x} skips a step of the handshake");
            return;
        }
        if added & status::FEATURES_OK != 0 && !self.features_acceptable() {
            // Leaving FEATURES_OK unset tells the driver the device refused (section 3.1.1).
            self.status = value & !status::FEATURES_OK;
            return;
        }
        self.status = value;
        if added & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn features_acceptable(&self) -> bool {
        let unknown = self.driver_features & !self.offered_features();
        if unknown != 0 {
            crate::guest_debug!(
                "virtio-mmio: driver accepted features it was not offered: {unknown:#x}"
            );
            return false;
        }
        if self.driver_features & VIRTIO_F_VERSION_1 == 0 {
            crate::guest_debug!("virtio-mmio: legacy driver (no VIRTIO_F_VERSION_1) refused");
            return false;
        }
        true
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            let copy = Queue::try_from(queue.state()).ok();
            match copy.filter(|q| q.ready() && q.is_valid(&self.mem)) {
                Some(mut queue) => {
                    queue.set_event_idx(event_idx);
                    queues.push(queue);
                }
                None => {
                    crate::guest_debug!(
                        "virtio-mmio: queue {index} is not ready or not valid at DRIVER_OK"
                    );
                    return self.needs_reset();
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            interrupt: self.interrupt.clone() as Arc<dyn VirtioInterrupt>,
            acked_features: self.driver_features,
        };
        let result = self.device().activate(activation);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                crate::guest_error!("virtio device type {}: {e}", self.device().device_type());
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= status::DEVICE_NEEDS_RESET;
        self.interrupt.trigger(InterruptKind::Config);
    }

    fn reset(&mut self) {
        if self.activated {
            self.device().reset();
            self.activated = false;
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.queues.iter_mut().for_each(Queue::reset);
        self.interrupt.clear();
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE {
            self.device().read_config(offset - CONFIG_SPACE, data);
        } else if data.len() == 4 {
            data.copy_from_slice(&self.read_register(offset).to_le_bytes());
        } else {
            crate::guest_debug!(
                "virtio-mmio: {}-byte register read at {offset:#x}",
                data.len()
            );
            data.fill(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE {
            self.device().write_config(offset - CONFIG_SPACE, data);
        } else if let Ok(bytes) = <[u8; 4]>::try_from(data) {
            self.write_register(offset, u32::from_le_bytes(bytes));
        } else {
            crate::guest_debug!(
                "virtio-mmio: {}-byte register write at {offset:#x}",
                data.len()
            );
        }
    }
}

/// Locks a device even if a thread panicked while holding it (device state is plain data).
fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::ActivateError;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    /// Records what the transport did to it.
    struct Dummy {
        events: Vec<EventFd>,
        activated: Option<(usize, u64, bool)>,
        resets: usize,
        config: [u8; 8],
        refuse: bool,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            4
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 8]
        }
        fn queue_events(&self) -> &[EventFd] {
            &self.events
        }
        fn avail_features(&self) -> u64 {
            1 << 5
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&self.config, offset, data);
        }
        fn write_config(&mut self, offset: u64, data: &[u8]) {
            self.config[offset as usize..offset as usize + data.len()].copy_from_slice(data);
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            if self.refuse {
                return Err(ActivateError::Backend("no".into()));
            }
            let event_idx = a.queues.iter().all(|q| q.event_idx_enabled());
            self.activated = Some((a.queues.len(), a.acked_features, event_idx));
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
            self.activated = None;
        }
    }

    fn setup(refuse: bool) -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let dummy = Arc::new(Mutex::new(Dummy {
            events: (0..2)
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            activated: None,
            resets: 0,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            refuse,
        }));
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let irqfd = EventFd::new(EFD_NONBLOCK).unwrap();
        (MmioTransport::new(mem, dummy.clone(), irqfd), dummy)
    }

    fn r(t: &mut MmioTransport, offset: u64) -> u32 {
        let mut data = [0u8; 4];
        t.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn w(t: &mut MmioTransport, offset: u64, value: u32) {
        t.write(offset, &value.to_le_bytes());
    }

    /// The Linux driver's sequence up to FEATURES_OK, accepting `features`.
    fn negotiate(t: &mut MmioTransport, features: u64) {
        w(t, 0x70, 0);
        w(t, 0x70, status::ACKNOWLEDGE);
        w(t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(t, 0x24, 0);
        w(t, 0x20, features as u32);
        w(t, 0x24, 1);
        w(t, 0x20, (features >> 32) as u32);
        w(
            t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK,
        );
    }

    fn setup_queues(t: &mut MmioTransport) {
        for (sel, base) in [(0u32, 0x1_0000u32), (1, 0x2_0000)] {
            w(t, 0x30, sel);
            w(t, 0x38, 8);
            w(t, 0x80, base);
            w(t, 0x84, 0);
            w(t, 0x90, base + 0x1000);
            w(t, 0xa0, base + 0x2000);
            w(t, 0x44, 1);
        }
    }

    const ALL: u32 = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;

    #[test]
    fn identifies_as_a_version_2_device() {
        let (mut t, _) = setup(false);
        assert_eq!(r(&mut t, 0x0), MAGIC);
        assert_eq!(r(&mut t, 0x4), 2);
        assert_eq!(r(&mut t, 0x8), 4);
        w(&mut t, 0x14, 0);
        assert_eq!(r(&mut t, 0x10), (1 << 5) | (1 << 29));
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1); // VERSION_1 is bit 32
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x34), 8);
        w(&mut t, 0x30, 7);
        assert_eq!(r(&mut t, 0x34), 0);
        assert_eq!(r(&mut t, 0xb0), u32::MAX);
    }

    #[test]
    fn full_handshake_activates_with_negotiated_features() {
        let (mut t, dummy) = setup(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX);
        assert_eq!(r(&mut t, 0x70), ALL);
        setup_queues(&mut t);
        w(&mut t, 0x70, ALL | status::DRIVER_OK);
        assert_eq!(r(&mut t, 0x70), ALL | status::DRIVER_OK);
        let activated = dummy.lock().unwrap().activated;
        assert_eq!(
            activated,
            Some((2, VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX, true))
        );
        // Queue registers are frozen once running.
        w(&mut t, 0x30, 0);
        w(&mut t, 0x38, 4);
        assert_eq!(t.queues[0].size(), 8);
        // Reset reaches the device and clears everything.
        w(&mut t, 0x70, 0);
        assert_eq!(dummy.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, 0x70), 0);
        assert_eq!(r(&mut t, 0x44), 0);
    }

    #[test]
    fn queue_ready_zero_reads_back_zero_before_driver_ok() {
        let (mut t, _) = setup(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t);
        w(&mut t, 0x30, 1);
        assert_eq!(r(&mut t, 0x44), 1);
        w(&mut t, 0x44, 0);
        assert_eq!(r(&mut t, 0x44), 0);
    }

    #[test]
    fn unoffered_or_legacy_features_leave_features_ok_unset() {
        let (mut t, _) = setup(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1 | (1 << 7));
        assert_eq!(r(&mut t, 0x70), status::ACKNOWLEDGE | status::DRIVER);
        negotiate(&mut t, 1 << 5);
        assert_eq!(r(&mut t, 0x70), status::ACKNOWLEDGE | status::DRIVER);
    }

    #[test]
    fn status_out_of_order_or_clearing_bits_is_ignored() {
        let (mut t, dummy) = setup(false);
        w(&mut t, 0x70, status::DRIVER_OK);
        assert_eq!(r(&mut t, 0x70), 0);
        w(&mut t, 0x70, status::ACKNOWLEDGE | status::DRIVER);
        w(&mut t, 0x70, status::ACKNOWLEDGE);
        assert_eq!(r(&mut t, 0x70), status::ACKNOWLEDGE | status::DRIVER);
        w(
            &mut t,
            0x70,
            status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK,
        );
        assert_eq!(r(&mut t, 0x70), status::ACKNOWLEDGE | status::DRIVER);
        assert!(dummy.lock().unwrap().activated.is_none());
    }

    #[test]
    fn invalid_queues_or_a_refusing_device_need_reset() {
        let (mut t, dummy) = setup(false);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t);
        // Point queue 1's descriptor table outside guest memory: the ready write was accepted,
        // so undo readiness by reset and redo with a bad address.
        w(&mut t, 0x70, 0);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t);
        t.queues[1].set_desc_table_address(Some(0xffff_0000), Some(0x10));
        w(&mut t, 0x70, ALL | status::DRIVER_OK);
        assert_ne!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
        assert!(dummy.lock().unwrap().activated.is_none());
        assert_ne!(t.interrupt().status() & INTERRUPT_CONFIG_CHANGE, 0);

        let (mut t, _) = setup(true);
        negotiate(&mut t, VIRTIO_F_VERSION_1);
        setup_queues(&mut t);
        w(&mut t, 0x70, ALL | status::DRIVER_OK);
        assert_ne!(r(&mut t, 0x70) & status::DEVICE_NEEDS_RESET, 0);
    }

    #[test]
    fn notify_forwards_to_the_queue_eventfd_and_ack_clears_status() {
        let (mut t, dummy) = setup(false);
        w(&mut t, 0x50, 1);
        w(&mut t, 0x50, 9); // no such queue: logged, nothing else
        assert_eq!(dummy.lock().unwrap().events[1].read().unwrap(), 1);
        assert!(dummy.lock().unwrap().events[0].read().is_err());
        t.interrupt().trigger(InterruptKind::Queue(1));
        assert_eq!(r(&mut t, 0x60), INTERRUPT_USED_RING);
        w(&mut t, 0x64, INTERRUPT_USED_RING);
        assert_eq!(r(&mut t, 0x60), 0);
    }

    #[test]
    fn every_queue_shares_the_line_and_config_changes_move_the_generation() {
        let (mut t, _) = setup(false);
        let irqfd = t.interrupt().irqfd().try_clone().unwrap();
        let line: Arc<dyn VirtioInterrupt> = t.interrupt.clone();
        line.trigger(InterruptKind::Queue(0));
        line.trigger(InterruptKind::Queue(1));
        assert_eq!(r(&mut t, 0x60), INTERRUPT_USED_RING);
        assert_eq!(r(&mut t, 0xfc), 0);
        assert_eq!(irqfd.read().unwrap(), 2);
        line.trigger(InterruptKind::Config);
        assert_eq!(
            r(&mut t, 0x60),
            INTERRUPT_USED_RING | INTERRUPT_CONFIG_CHANGE
        );
        assert_eq!(r(&mut t, 0xfc), 1);
        assert_eq!(irqfd.read().unwrap(), 1);
        // A reset clears the status but not the generation (it only ever moves forward).
        w(&mut t, 0x70, 0);
        assert_eq!((r(&mut t, 0x60), r(&mut t, 0xfc)), (0, 1));
    }

    #[test]
    fn config_space_and_odd_widths() {
        let (mut t, dummy) = setup(false);
        let mut b = [0u8; 2];
        t.read(0x102, &mut b);
        assert_eq!(b, [3, 4]);
        t.read(0x107, &mut b);
        assert_eq!(b, [8, 0]);
        t.write(0x100, &[9]);
        assert_eq!(dummy.lock().unwrap().config[0], 9);
        let mut one = [0xffu8; 1];
        t.read(0x0, &mut one);
        assert_eq!(one, [0]);
        t.write(0x70, &[1]); // ignored: not 32 bits
        assert_eq!(r(&mut t, 0x70), 0);
    }
}
