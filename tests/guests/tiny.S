/*
 * Tiny test guests for Tessera. One source, several variants (-DVARIANT_*), each linked to an
 * ELF64 image loaded at 1 MiB. They talk to the test suite over the 8250 serial port (0x3f8),
 * mark "booted" on the boot-done port (0x3f0) as their very first instruction, and end through
 * the i8042 reset line (0xfe to port 0x64).
 *
 *   report64   64-bit Linux boot: prints the zero page's cmdline and e820 map, resets
 *   pvh        PVH entry (32-bit, the Xen ELF note): prints start-info magic, cmdline, memmap, resets
 *   reset64    boot-done, then reset at once (benchmarks: first instruction, reset -> exit)
 *   idle64     boot-done, then halts forever with interrupts off (RSS, signals)
 *   triple64   boot-done, then an undefined opcode with no IDT: a triple fault
 *   kbd64      polls the i8042 and prints the scancodes it receives; resets after four
 *   smp64      counts CPUs in the MP table, wakes the APs with INIT-SIPI-SIPI, each AP reports in
 *   tick64     prints "tick" every ~TICK_CYCLES TSC cycles and the i8042 scancodes it receives
 *              between ticks; resets after four (pause/resume and Ctrl-Alt-Del over the API)
 *   flood64    prints lines to the serial port as fast as it can, forever; resets as soon as the
 *              i8042 has a byte for it (SIGTERM's Ctrl-Alt-Del), without reading it
 *   rereset64  prints one line, pulses the i8042 reset line ten times (as Linux's reboot does),
 *              then prints "after reset" lines forever (which must never reach the console)
 *   bootspam64 writes the boot-done port 10,000 times, prints done, resets
 */

#define SERIAL       0x3f8
#define BOOT_DONE    0x3f0
#define I8042_DATA   0x60
#define I8042_CMD    0x64
#define STACK_TOP    0x8ff0

#define AP_TRAMPOLINE 0x3000     /* SIPI vector 0x03 */
#define AP_COUNT      0x3ff8     /* APs that reported in */
#define AP_LOCK       0x3ffc     /* serial port lock */
#define LAPIC_PD      0x4000     /* page directory mapping the LAPIC's 2 MiB page */
#define LAPIC_BASE    0xfee00000
#define TICK_CYCLES   100000000 /* ~30-50 ms of TSC */

        .text

#ifdef VARIANT_PVH
/* ---------------------------------------------------------------- 32-bit PVH guest */
        .code32
        .globl _start
_start:
        mov     $BOOT_DONE, %dx
        mov     $1, %al
        out     %al, %dx
        mov     $STACK_TOP, %esp
        mov     %ebx, %edi                      /* hvm_start_info */

        mov     $msg_boot_pvh, %esi
        call    puts32
        mov     $msg_magic, %esi
        call    puts32
        mov     (%edi), %eax
        call    puthex32
        call    newline32

        mov     $msg_cmdline, %esi
        call    puts32
        mov     0x18(%edi), %esi                /* cmdline_paddr (low half) */
        call    puts32
        call    newline32

        mov     0x28(%edi), %ebp                /* memmap_paddr (low half) */
        mov     0x30(%edi), %ecx                /* memmap_entries */
1:      test    %ecx, %ecx
        jz      2f
        push    %ecx
        mov     $msg_e820, %esi
        call    puts32
        mov     4(%ebp), %eax                   /* addr */
        call    puthex32
        mov     0(%ebp), %eax
        call    puthex32
        call    space32
        mov     12(%ebp), %eax                  /* size */
        call    puthex32
        mov     8(%ebp), %eax
        call    puthex32
        call    space32
        mov     16(%ebp), %eax                  /* type */
        call    puthex32
        call    newline32
        add     $24, %ebp
        pop     %ecx
        dec     %ecx
        jmp     1b
2:      mov     $msg_done, %esi
        call    puts32
        mov     $0xfe, %al
        out     %al, $I8042_CMD
3:      cli
        hlt
        jmp     3b

putc32: push    %edx
        mov     $SERIAL, %dx
        out     %al, %dx
        pop     %edx
        ret
puts32: lodsb
        test    %al, %al
        jz      1f
        call    putc32
        jmp     puts32
1:      ret
space32:
        mov     $' ', %al
        jmp     putc32
newline32:
        mov     $'\n', %al
        jmp     putc32
/* eax: value; prints 8 hex digits */
puthex32:
        push    %ebx
        push    %ecx
        mov     %eax, %ebx
        mov     $8, %ecx
1:      rol     $4, %ebx
        mov     %bl, %al
        and     $0xf, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     2f
        add     $('a' - '0' - 10), %al
2:      call    putc32
        dec     %ecx
        jnz     1b
        pop     %ecx
        pop     %ebx
        ret

        .section .note.Xen, "a", @note
        .balign 4
        .long   4                               /* namesz */
        .long   4                               /* descsz */
        .long   18                              /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz  "Xen"
        .long   _start
        .text

#else
/* ---------------------------------------------------------------- 64-bit Linux-boot guests */
        .code64
        .globl _start
_start:
        mov     $BOOT_DONE, %dx
        mov     $1, %al
        out     %al, %dx
        mov     %rsi, %r15                      /* zero page */

#if defined(VARIANT_RESET64)
        jmp     reset
#elif defined(VARIANT_IDLE64)
        jmp     halt
#elif defined(VARIANT_TRIPLE64)
        lea     msg_fault(%rip), %rsi
        call    puts
        ud2
#elif defined(VARIANT_REPORT64)
        lea     msg_boot_linux64(%rip), %rsi
        call    puts
        lea     msg_cmdline(%rip), %rsi
        call    puts
        mov     0x228(%r15), %esi               /* hdr.cmd_line_ptr */
        call    puts
        call    newline
        movzbl  0x1e8(%r15), %r14d              /* e820_entries */
        lea     0x2d0(%r15), %r13               /* e820_table */
1:      test    %r14d, %r14d
        jz      2f
        lea     msg_e820(%rip), %rsi
        call    puts
        mov     0(%r13), %rax
        call    puthex
        call    space
        mov     8(%r13), %rax
        call    puthex
        call    space
        mov     16(%r13), %eax
        call    puthex32_64
        call    newline
        add     $20, %r13
        dec     %r14d
        jmp     1b
2:      lea     msg_done(%rip), %rsi
        call    puts
        jmp     reset
#elif defined(VARIANT_KBD64)
        lea     msg_kbd_wait(%rip), %rsi
        call    puts
        mov     $4, %r14d
1:      in      $I8042_CMD, %al
        test    $1, %al
        jz      1b
        in      $I8042_DATA, %al
        movzbl  %al, %ebx
        shl     $56, %rbx
        lea     msg_key(%rip), %rsi
        call    puts
        mov     $2, %ecx
        call    puthex_digits
        call    newline
        dec     %r14d
        jnz     1b
        lea     msg_done(%rip), %rsi
        call    puts
        jmp     reset
#elif defined(VARIANT_TICK64)
        lea     msg_ticking(%rip), %rsi
        call    puts
        mov     $4, %r14d
1:      rdtsc                                   /* r13: when the next tick is due */
        shl     $32, %rdx
        or      %rax, %rdx
        lea     TICK_CYCLES(%rdx), %r13
2:      pause
        rdtsc
        shl     $32, %rdx
        or      %rdx, %rax
        cmp     %r13, %rax
        jb      2b
3:      in      $I8042_CMD, %al                 /* every key that arrived meanwhile */
        test    $1, %al
        jz      4f
        in      $I8042_DATA, %al
        movzbl  %al, %ebx
        shl     $56, %rbx
        lea     msg_key(%rip), %rsi
        call    puts
        mov     $2, %ecx
        call    puthex_digits
        call    newline
        dec     %r14d
        jnz     3b
        lea     msg_done(%rip), %rsi
        call    puts
        jmp     reset
4:      lea     msg_tick(%rip), %rsi
        call    puts
        jmp     1b
#elif defined(VARIANT_FLOOD64)
1:      lea     msg_flood(%rip), %rsi
        call    puts
        in      $I8042_CMD, %al
        test    $1, %al
        jz      1b
        jmp     reset
#elif defined(VARIANT_RERESET64)
        lea     msg_before_reset(%rip), %rsi
        call    puts
        mov     $10, %ecx
        mov     $0xfe, %al
1:      out     %al, $I8042_CMD
        dec     %ecx
        jnz     1b
2:      lea     msg_after_reset(%rip), %rsi
        call    puts
        jmp     2b
#elif defined(VARIANT_BOOTSPAM64)
        mov     $10000, %ecx
        mov     $BOOT_DONE, %dx
        mov     $1, %al
1:      out     %al, %dx
        dec     %ecx
        jnz     1b
        lea     msg_done(%rip), %rsi
        call    puts
        jmp     reset
#elif defined(VARIANT_SMP64)
        /* Count processor entries in the MP table (floating pointer in the EBDA's first KiB). */
        mov     $0x9fc00, %rdi
1:      cmpl    $0x5f504d5f, (%rdi)             /* "_MP_" */
        je      2f
        add     $16, %rdi
        cmp     $0xa0000, %rdi
        jb      1b
        lea     msg_no_mptable(%rip), %rsi
        call    puts
        jmp     reset
2:      mov     4(%rdi), %edi                   /* configuration table */
        movzwl  34(%rdi), %ecx                  /* entry count */
        lea     44(%rdi), %rsi
        xor     %r12d, %r12d                    /* processors */
3:      test    %ecx, %ecx
        jz      5f
        cmpb    $0, (%rsi)
        jne     4f
        inc     %r12d
        add     $12, %rsi                       /* processor entries are 20 bytes: 8 + 12 */
4:      add     $8, %rsi
        dec     %ecx
        jmp     3b
5:      lea     msg_mp_cpus(%rip), %rsi
        call    puts
        mov     %r12d, %ebx
        shl     $56, %rbx
        mov     $2, %ecx
        call    puthex_digits
        call    newline

        /* Copy the real-mode trampoline to AP_TRAMPOLINE. */
        lea     ap_trampoline(%rip), %rsi
        mov     $AP_TRAMPOLINE, %rdi
        mov     $(ap_trampoline_end - ap_trampoline), %rcx
        rep movsb
        movl    $0, AP_COUNT
        movl    $0, AP_LOCK

        /* Map the LAPIC: PDPT[3] -> LAPIC_PD, whose entry 503 is the 2 MiB page at 0xfee00000. */
        mov     $LAPIC_PD, %rdi
        xor     %eax, %eax
        mov     $512, %ecx
        rep stosq
        mov     $(LAPIC_BASE | 0x9b), %eax      /* present, rw, PWT, PCD, 2 MiB */
        mov     %rax, LAPIC_PD + 503 * 8
        movq    $(LAPIC_PD | 3), 0xa000 + 3 * 8
        mov     %cr3, %rax
        mov     %rax, %cr3

        /* INIT, then two STARTUPs, to all but self. */
        mov     $LAPIC_BASE, %edi
        movl    $0, 0x310(%rdi)
        movl    $0x000c4500, 0x300(%rdi)
        movl    $(0x000c4600 | (AP_TRAMPOLINE >> 12)), 0x300(%rdi)
        movl    $(0x000c4600 | (AP_TRAMPOLINE >> 12)), 0x300(%rdi)

        /* Wait for every AP (r12 - 1 of them) to report in. */
        lea     -1(%r12), %r13d
6:      pause
        cmp     AP_COUNT, %r13d
        jne     6b
        /* Take the serial lock so the last AP's line is complete. */
7:      mov     $1, %eax
        xchg    %eax, AP_LOCK
        test    %eax, %eax
        jnz     7b
        lea     msg_all_up(%rip), %rsi
        call    puts
        jmp     reset

        .code16
ap_trampoline:
        cli
        xor     %ax, %ax
        mov     %ax, %ds
        mov     $1, %eax
        cpuid
        shr     $24, %ebx                       /* initial APIC ID */
1:      mov     $1, %eax
        xchg    %eax, AP_LOCK
        test    %eax, %eax
        jnz     1b
        mov     $SERIAL, %dx
        mov     $'c', %al
        out     %al, %dx
        mov     $'p', %al
        out     %al, %dx
        mov     $'u', %al
        out     %al, %dx
        mov     $' ', %al
        out     %al, %dx
        mov     %bl, %al
        shr     $4, %al
        add     $'0', %al
        out     %al, %dx
        mov     %bl, %al
        and     $0xf, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     2f
        add     $('a' - '0' - 10), %al
2:      out     %al, %dx
        mov     $' ', %al
        out     %al, %dx
        mov     $'u', %al
        out     %al, %dx
        mov     $'p', %al
        out     %al, %dx
        mov     $'\n', %al
        out     %al, %dx
        lock incl AP_COUNT
        movl    $0, AP_LOCK
3:      cli
        hlt
        jmp     3b
ap_trampoline_end:
        .code64
#else
#error "pick a VARIANT_*"
#endif

reset:  mov     $0xfe, %al
        out     %al, $I8042_CMD
halt:   cli
        hlt
        jmp     halt

putc:   push    %rdx
        mov     $SERIAL, %dx
        out     %al, %dx
        pop     %rdx
        ret
puts:   lodsb
        test    %al, %al
        jz      1f
        call    putc
        jmp     puts
1:      ret
space:  mov     $' ', %al
        jmp     putc
newline:
        mov     $'\n', %al
        jmp     putc
/* rax: value; prints 16 hex digits */
puthex: mov     %rax, %rbx
        mov     $16, %ecx
        jmp     puthex_digits
/* eax: value; prints 8 hex digits */
puthex32_64:
        mov     %eax, %ebx
        shl     $32, %rbx
        mov     $8, %ecx
/* rbx: value, most significant digit first; ecx: digits */
puthex_digits:
        rol     $4, %rbx
        mov     %bl, %al
        and     $0xf, %al
        add     $'0', %al
        cmp     $'9', %al
        jbe     1f
        add     $('a' - '0' - 10), %al
1:      call    putc
        dec     %ecx
        jnz     puthex_digits
        ret
#endif

        .section .rodata
msg_boot_linux64:       .asciz "tessera-test: boot=linux64\n"
msg_boot_pvh:           .asciz "tessera-test: boot=pvh\n"
msg_magic:              .asciz "magic="
msg_cmdline:            .asciz "cmdline="
msg_e820:               .asciz "e820 "
msg_done:               .asciz "tessera-test: done\n"
msg_fault:              .asciz "tessera-test: about to triple fault\n"
msg_kbd_wait:           .asciz "tessera-test: waiting for keys\n"
msg_key:                .asciz "key "
msg_ticking:            .asciz "tessera-test: ticking\n"
msg_tick:               .asciz "tick\n"
msg_no_mptable:         .asciz "tessera-test: no MP table\n"
msg_mp_cpus:            .asciz "mptable cpus="
msg_all_up:             .asciz "tessera-test: all cpus up\n"
msg_flood:              .asciz "tessera-test: flooding the console 0123456789abcdefghijklmnopqrstuvwxyz\n"
msg_before_reset:       .asciz "tessera-test: resetting ten times\n"
msg_after_reset:        .asciz "tessera-test: still running after the reset\n"
