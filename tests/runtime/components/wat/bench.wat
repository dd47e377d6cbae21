;; Benchmark plugin. on-message(topic, payload): if the payload is at least
;; 4 bytes, its first 4 (little-endian) say how many times to call the host
;; import log.write(debug, "x", []) before returning; the rest is ignored.
;; So an empty payload measures a bare export call, N measures N host-import
;; round trips, and a large payload measures list<u8> lowering.
(module
  (import "astrid:kernel/log@0.1.0" "write" (func $write (param i32 i32 i32 i32 i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 16) "x")

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
    (global.set $heap (i32.const 65536))
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))

  (func (export "on-message")
    (param $tp i32) (param $tl i32) (param $pp i32) (param $pl i32) (result i32)
    (local $n i32)
    (if (i32.ge_u (local.get $pl) (i32.const 4))
      (then (local.set $n (i32.load (local.get $pp)))))
    (block $done
      (loop $again
        (br_if $done (i32.eqz (local.get $n)))
        (call $write (i32.const 1) (i32.const 16) (i32.const 1) (i32.const 0) (i32.const 0)
                     (i32.const 512))
        (local.set $n (i32.sub (local.get $n) (i32.const 1)))
        (br $again)))
    (global.set $heap (i32.const 65536))
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))
)
