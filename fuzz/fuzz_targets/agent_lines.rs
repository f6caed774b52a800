//! Bytes from an agent on the stdio front: framing into lines (bounded, `\r\n`, oversize),
//! and every line through the envelope, the id salvage, the call checks and rmcp's parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokio::io::AsyncWriteExt;
use tollgate_proxy::front::stdio::LineTransport;

fuzz_target!(|data: &[u8]| {
    for line in data.split(|b| *b == b'\n') {
        tollgate_proxy::fuzzing::agent_line(line);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (mut agent, tollgate) = tokio::io::duplex(1 << 16);
        let (read, write) = tokio::io::split(tollgate);
        let mut transport = LineTransport::new(read, write, 4096);
        let input = data.to_vec();
        let writer = tokio::spawn(async move {
            let _ = agent.write_all(&input).await;
            let _ = agent.shutdown().await;
            agent
        });
        while rmcp::transport::Transport::receive(&mut transport)
            .await
            .is_some()
        {}
        drop(writer.await);
    });
});
