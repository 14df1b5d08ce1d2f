//! The JSON `quantization_config` of checkpoints (and `Any4Config` alone): whatever parses must
//! serialize and parse back to the same value.
#![no_main]

use any4_burn::CheckpointMeta;
use any4_core::Any4Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: any4_fuzz::init("quant_config"), |data: &[u8]| {
    if let Ok(c) = serde_json::from_slice::<CheckpointMeta>(data) {
        let text = serde_json::to_string(&c).expect("a parsed config serializes");
        let back: CheckpointMeta = serde_json::from_str(&text).expect("and parses back");
        assert_eq!(back, c);
        for l in c.layers.values() {
            let [_, k] = l.shape;
            let _ = (l.config.group_size().groups_for(k), l.config.group_size().len_for(k));
        }
    }
    if let Ok(c) = serde_json::from_slice::<Any4Config>(data) {
        let text = serde_json::to_string(&c).expect("serializes");
        assert_eq!(serde_json::from_str::<Any4Config>(&text).expect("parses back"), c);
    }
});
