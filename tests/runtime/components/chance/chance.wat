;; A plugin that reads WASI randomness (secure and insecure, and the insecure
;; seed) and the wall clock (issue 15 tests).
(module
  (import "astrid:kernel/bus@0.1.0" "subscribe" (func $subscribe (param i32 i32 i32)))
  (import "astrid:kernel/bus@0.1.0" "publish" (func $publish (param i32 i32 i32 i32 i32)))
  (import "wasi:random/random@0.2.9" "get-random-u64" (func $random (result i64)))
  (import "wasi:clocks/wall-clock@0.2.9" "now" (func $now (param i32)))
  (import "wasi:random/insecure@0.2.9" "get-insecure-random-u64" (func $insecure (result i64)))
  (import "wasi:random/insecure-seed@0.2.9" "insecure-seed" (func $seed (param i32)))
  (data (i32.const 16) "chance.out")
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  ;; 256: export result area; 512: host-call result area; 1024: topic buffer.

  (func $realloc (export "cabi_realloc")
    (param $old i32) (param $old_size i32) (param $align i32) (param $new_size i32) (result i32)
    (local $ptr i32) (local $end i32)
    (local.set $ptr
      (i32.and
        (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
        (i32.xor (i32.sub (local.get $align) (i32.const 1)) (i32.const -1))))
    (local.set $end (i32.add (local.get $ptr) (local.get $new_size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (i32.const -1)
              (memory.grow
                (i32.div_u
                  (i32.add (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
                           (i32.const 65535))
                  (i32.const 65536))))
          (then unreachable))))
    (global.set $heap (local.get $end))
    (if (local.get $old)
      (then (memory.copy (local.get $ptr) (local.get $old) (local.get $old_size))))
    (local.get $ptr))

  (func (export "init") (param $cp i32) (param $cl i32) (result i32)
    (call $subscribe (local.get $cp) (local.get $cl) (i32.const 512))
    (global.set $heap (i32.const 65536))
    (if (i32.load8_u (i32.const 512))
      (then
        ;; err(error): payload at 512+8 (u64 alignment); message ptr/len at 524 / 528
        (i32.store8 (i32.const 256) (i32.const 1))
        (i32.store (i32.const 260) (i32.load (i32.const 524)))
        (i32.store (i32.const 264) (i32.load (i32.const 528)))
        (return (i32.const 256))))
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))

  ;; on-message: publish on chance.out 8 random bytes, the wall clock (16 bytes: seconds,
  ;; nanoseconds, padding), 8 insecure random bytes and the insecure seed (16 bytes).
  (func (export "on-message")
    (param $tp i32) (param $tl i32) (param $pp i32) (param $pl i32) (result i32)
    (i64.store (i32.const 1024) (call $random))
    (call $now (i32.const 1032))
    (i64.store (i32.const 1048) (call $insecure))
    (call $seed (i32.const 1056))
    (call $publish (i32.const 16) (i32.const 10) (i32.const 1024) (i32.const 48) (i32.const 512))
    (global.set $heap (i32.const 65536))
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))
)
