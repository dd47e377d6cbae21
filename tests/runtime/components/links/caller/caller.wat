;; A link importer: init(config) subscribes to the pattern `config`;
;; on-message(topic, payload) calls astrid:markdown/render.to-html(payload)
;; and publishes the HTML on `md.ok`, or the error string on `md.err`.
;; A topic of 8 bytes (`in.bench`) first calls to-html("*hi*") payload-length
;; minus one times (the kernel bench's cross-component call), then once more.
(module
  (import "astrid:kernel/bus@0.1.0" "subscribe" (func $subscribe (param i32 i32 i32)))
  (import "astrid:kernel/bus@0.1.0" "publish" (func $publish (param i32 i32 i32 i32 i32)))
  (import "astrid:markdown/render@0.1.0" "to-html" (func $to_html (param i32 i32 i32)))
  (memory (export "memory") 2)
  (global $heap (mut i32) (i32.const 65536))
  ;; 256: export result area; 512: host-call result area; 768: to-html result area.
  (data (i32.const 2048) "md.ok")
  (data (i32.const 2056) "md.err")
  (data (i32.const 2064) "*hi*")

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
        (i32.store8 (i32.const 256) (i32.const 1))
        (i32.store (i32.const 260) (i32.load (i32.const 524)))
        (i32.store (i32.const 264) (i32.load (i32.const 528)))
        (return (i32.const 256))))
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))

  (func (export "on-message")
    (param $tp i32) (param $tl i32) (param $pp i32) (param $pl i32) (result i32)
    (local $i i32)
    (if (i32.eq (local.get $tl) (i32.const 8))
      (then
        (local.set $i (local.get $pl))
        (block $done
          (loop $again
            (br_if $done (i32.le_s (local.get $i) (i32.const 1)))
            (call $to_html (i32.const 2064) (i32.const 4) (i32.const 768))
            (global.set $heap (i32.const 131072))
            (local.set $i (i32.sub (local.get $i) (i32.const 1)))
            (br $again)))
        (local.set $pp (i32.const 2064))
        (local.set $pl (i32.const 4))))
    (call $to_html (local.get $pp) (local.get $pl) (i32.const 768))
    (if (i32.load8_u (i32.const 768))
      (then (call $publish (i32.const 2056) (i32.const 6)
                  (i32.load (i32.const 772)) (i32.load (i32.const 776)) (i32.const 512)))
      (else (call $publish (i32.const 2048) (i32.const 5)
                  (i32.load (i32.const 772)) (i32.load (i32.const 776)) (i32.const 512))))
    (global.set $heap (i32.const 65536))
    (if (i32.load8_u (i32.const 512))
      (then
        (i32.store8 (i32.const 256) (i32.const 1))
        (i32.store (i32.const 260) (i32.load (i32.const 520)))
        (i32.store (i32.const 264) (i32.load (i32.const 524)))
        (return (i32.const 256))))
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))
)
