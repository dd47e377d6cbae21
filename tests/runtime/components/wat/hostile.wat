;; A hostile astrid plugin, written against the canonical ABI by hand.
;;
;; init(config): "trap" traps, "loop" spins forever, "bomb" allocates without
;; bound; anything else subscribes to `hostile.>` and succeeds.
;; on-message(topic): the token after `hostile.` picks the behaviour:
;; `trap` -> unreachable, `loop` -> spins forever, `bomb` -> grows memory
;; 1 MiB at a time until the store limit refuses, then traps; anything else
;; is accepted and ignored.
(module
  (import "astrid:kernel/bus@0.1.0" "subscribe" (func $subscribe (param i32 i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  (data (i32.const 16) "hostile.>")
  ;; 256: result area returned by exports; 512: result area of host calls.

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

  (func $misbehave (param $what i32)
    ;; 't' trap, 'l' loop, 'b' bomb; other bytes return normally
    (if (i32.eq (local.get $what) (i32.const 116)) (then unreachable))
    (if (i32.eq (local.get $what) (i32.const 108)) (then (loop $spin (br $spin))))
    (if (i32.eq (local.get $what) (i32.const 98))
      (then
        (loop $grow
          (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
          (br $grow)))))

  (func (export "init") (param $cp i32) (param $cl i32) (result i32)
    (if (local.get $cl) (then (call $misbehave (i32.load8_u (local.get $cp)))))
    (call $subscribe (i32.const 16) (i32.const 9) (i32.const 512))
    (global.set $heap (i32.const 65536))
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))

  (func (export "on-message")
    (param $tp i32) (param $tl i32) (param $pp i32) (param $pl i32) (result i32)
    (if (i32.gt_u (local.get $tl) (i32.const 8))
      (then (call $misbehave (i32.load8_u (i32.add (local.get $tp) (i32.const 8))))))
    (global.set $heap (i32.const 65536))
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))
)
