// Parley web client: talk face to face with the replica.
//
// URL: /c/<conversation id>?t=<join token>[&camera=0][&test_pattern=1]
// Everything the page observes is also kept in `window.parley` (status, frames, captions, latency marks),
// which is what the automated browser tests read.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const pathMatch = location.pathname.match(/\/c\/([^/?#]+)/);
  const conversationId = pathMatch ? decodeURIComponent(pathMatch[1]) : "";
  const token = params.get("t") || "";
  const testPattern = params.get("test_pattern") === "1";
  const wantCamera = params.get("camera") !== "0";
  const api = (path) => `/api/conversations/${encodeURIComponent(conversationId)}/${path}`;

  const MESSAGES = {
    missing_token: "This link is incomplete: it has no join token. Open the full conversation link you were given.",
    invalid_token: "This conversation link is not valid. Check that you opened the whole link.",
    token_expired: "This conversation link has expired. Ask for a new link to join.",
    foreign_token: "This link does not belong to this conversation.",
    unknown_conversation: "This conversation does not exist.",
    conversation_ended: "This conversation has ended.",
    in_call: "This conversation is already open in another tab or on another device.",
    too_many_sessions: "The service is busy right now. Please try again in a minute.",
    unavailable: "The conversation service is unavailable right now. Please try again shortly.",
    mic_denied: "Microphone access was denied. Allow the microphone for this site (the icon in the address bar), then reload the page.",
    no_mic: "No microphone was found. Connect a microphone, then reload the page.",
    no_media: "This browser cannot use the microphone here (the page must be opened over HTTPS in a current browser).",
    connection_lost: "The connection was lost. Reload the page to rejoin.",
  };

  // Everything observable, for the UI and for tests.
  const S = (window.parley = {
    status: "starting", error: null, errorCode: null, ended: false, endReason: null,
    conversationId, resumeId: null, connected: false, connections: 0, reconnects: 0,
    frames: 0, nonBlank: false, lastLuma: null, lastStd: null, frameSize: null,
    captions: [], events: [], errors: [],
    latencies: [], serverLatencies: [], turns: [],
    flashes: [], beeps: [], beepsWebAudio: [], brightFrames: 0,
    remoteSpeechBlocks: 0, remotePeak: 0, remoteBlocks: 0, remoteLoudBlocks: 0, remoteLastLoudAt: null,
    replicaSpeaking: false, userSpeaking: false, muted: false, camera: false,
    rtpOrigin: null, hello: null, pendingFace: null,
    mic: { lastLoudAt: null, speechStartAt: null, segments: [], level: -120 },
  });

  let iceServers = [];
  let localStream = null;
  let micTrack = null;
  let camTrack = null;
  let pc = null;
  let dc = null;
  let hungUp = false;
  let reconnecting = false;
  let reconnectTimer = null;
  let audioCtx = null;
  let remoteMeter = null;
  let lastTypedAt = -Infinity;
  let replyTurn = null;
  let replyText = "";

  // -- UI ------------------------------------------------------------------------------------------
  function setStatus(text, status) {
    $("status").textContent = text;
    if (status) S.status = status;
  }

  function showOverlay(text, buttonLabel, onClick) {
    $("overlay-text").textContent = text;
    const button = $("overlay-button");
    button.hidden = !buttonLabel;
    if (buttonLabel) {
      button.textContent = buttonLabel;
      button.onclick = onClick;
    }
    $("overlay").hidden = false;
  }

  function hideOverlay() { $("overlay").hidden = true; }

  function fail(code, message) {
    S.errorCode = code || "error";
    S.error = MESSAGES[code] || message || "Something went wrong.";
    setStatus("Not connected", "error");
    showOverlay(S.error, code === "connection_lost" || code === "unavailable" || code === "too_many_sessions"
      ? "Try again" : null, () => location.reload());
    stopMedia();
  }

  function log(entry) {
    S.events.push({ at: Math.round(performance.now()), ...entry });
    if (S.events.length > 400) S.events.splice(0, S.events.length - 400);
  }

  function setCaption(role, text, partial) {
    const el = $(role === "user" ? "caption-user" : "caption-replica");
    el.textContent = text;
    el.classList.toggle("partial", !!partial);
  }

  // -- audio analysis (AudioWorklet level meter) ------------------------------------------------------
  async function ensureAudio() {
    if (audioCtx) return audioCtx;
    audioCtx = new AudioContext({ latencyHint: "interactive" });
    await audioCtx.audioWorklet.addModule("/static/meter.js");
    if (audioCtx.state === "suspended") audioCtx.resume().catch(() => {});
    return audioCtx;
  }

  // Context time -> performance.now() time at which that audio is heard.
  function heardAt(contextTime) {
    const ts = audioCtx.getOutputTimestamp();
    return ts.performanceTime + (contextTime - ts.contextTime) * 1000;
  }

  function meter(stream, threshold, onBlocks) {
    const source = audioCtx.createMediaStreamSource(stream);
    const node = new AudioWorkletNode(audioCtx, "level-meter", { processorOptions: { threshold } });
    const sink = audioCtx.createGain();
    sink.gain.value = 0;
    source.connect(node).connect(sink).connect(audioCtx.destination);
    node.port.onmessage = (e) => onBlocks(e.data.rate, e.data.blocks);
    return { source, node, sink, disconnect() { source.disconnect(); node.disconnect(); sink.disconnect(); } };
  }

  // Microphone: a simple energy VAD marking where the user's speech ends (for the latency read-out).
  let micFloor = -60;
  let micInSpeech = false;
  let micSpeechStart = 0;
  let micLastLoud = 0;

  function onMicBlocks(rate, blocks) {
    const inputLag = ((audioCtx.outputLatency || 0) + (audioCtx.baseLatency || 0)) * 1000;
    for (const [t, rms] of blocks) {
      const db = 20 * Math.log10(Math.max(rms, 1e-6));
      S.mic.level = db;
      micFloor = db < micFloor ? db : micFloor + 0.002 * (db - micFloor);
      const end = t + 128 / rate;
      const loud = db > Math.max(-45, micFloor + 15) && !S.muted;
      if (loud) {
        if (!micInSpeech) {
          micInSpeech = true;
          micSpeechStart = t;
          S.mic.speechStartAt = heardAt(t) - inputLag;
        }
        micLastLoud = end;
        S.mic.lastLoudAt = heardAt(end) - inputLag;
      } else if (micInSpeech && end - micLastLoud > 0.35) {
        micInSpeech = false;
        if (micLastLoud - micSpeechStart > 0.2) {
          S.mic.segments.push({ start: heardAt(micSpeechStart) - inputLag, end: heardAt(micLastLoud) - inputLag });
          if (S.mic.segments.length > 50) S.mic.segments.shift();
        }
      }
    }
  }

  // The replica's audio: speech presence, and beep onsets of the A/V test pattern.
  let remoteQuietSince = 0;

  function onRemoteBlocks(rate, blocks) {
    for (const [t, rms, first] of blocks) {
      S.remotePeak = Math.max(S.remotePeak, rms);
      S.remoteBlocks++;
      if (rms > 0.01) {
        S.remoteLoudBlocks++;
        S.remoteLastLoudAt = heardAt(t + 128 / rate);
        if (S.replicaSpeaking) S.remoteSpeechBlocks++;
      }
      if (first >= 0) {
        if (t - remoteQuietSince > 0.4 && testPattern) {
          S.beepsWebAudio.push(heardAt(t + first / rate));
          if (S.beepsWebAudio.length > 100) S.beepsWebAudio.shift();
        }
        remoteQuietSince = t + 128 / rate;
      } else if (rms > 0.02) {
        remoteQuietSince = t + 128 / rate;
      }
    }
  }

  // A/V test pattern: beep onsets in the replica's audio at the moment the browser plays it out
  // (MediaStreamTrackProcessor delivers the remote track's audio as it is rendered, stamped on the
  // performance clock). The WebAudio meter above hears the same beeps through WebAudio's own buffering.
  function watchPlayout(track) {
    if (!testPattern || typeof MediaStreamTrackProcessor === "undefined") return;
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    let quietMs = 0;
    (async () => {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) return;
        const n = value.numberOfFrames;
        const buf = new Float32Array(n);
        value.copyTo(buf, { planeIndex: 0, format: "f32-planar" });
        let first = -1;
        for (let i = 0; i < n; i++) if (buf[i] > 0.1 || buf[i] < -0.1) { first = i; break; }
        if (first >= 0 && quietMs >= 400) {
          S.beeps.push(value.timestamp / 1000 + (1000 * first) / value.sampleRate);
          if (S.beeps.length > 100) S.beeps.shift();
        }
        quietMs = first >= 0 ? 0 : quietMs + (1000 * n) / value.sampleRate;
        value.close();
      }
    })().catch(() => {});
  }

  // -- video frames ------------------------------------------------------------------------------------
  const probe = document.createElement("canvas");
  probe.width = probe.height = 16;
  const probeCtx = probe.getContext("2d", { willReadFrequently: true });
  let wasFlash = false;

  function luma(video) {
    probeCtx.drawImage(video, 0, 0, 16, 16);
    const px = probeCtx.getImageData(0, 0, 16, 16).data;
    let sum = 0;
    let sq = 0;
    for (let i = 0; i < px.length; i += 4) {
      const y = 0.299 * px[i] + 0.587 * px[i + 1] + 0.114 * px[i + 2];
      sum += y;
      sq += y * y;
    }
    const n = px.length / 4;
    const mean = sum / n;
    return [mean, Math.sqrt(Math.max(0, sq / n - mean * mean))];
  }

  function framePtsUs(meta) {
    if (S.rtpOrigin == null || meta.rtpTimestamp == null) return null;
    const ticks = (((meta.rtpTimestamp - S.rtpOrigin) % 4294967296) + 4294967296) % 4294967296;
    return ticks / 0.09; // 90 kHz ticks -> microseconds
  }

  function onFrame(now, meta) {
    const video = $("face");
    S.frames++;
    S.frameSize = [meta.width, meta.height];
    const shownAt = meta.expectedDisplayTime || now;
    const pending = S.pendingFace;
    if (pending) {
      const pts = framePtsUs(meta);
      if (pts == null || pts + 1000 >= pending.pts_us) {
        S.pendingFace = null;
        faceShown(pending, shownAt, pts != null);
      }
    }
    // A 16x16 probe of every frame: blank check, and the test pattern's white flash frames.
    const [mean, std] = luma(video);
    S.lastLuma = mean;
    S.lastStd = std;
    if (std > 3 || (mean > 16 && mean < 240)) S.nonBlank = true;
    const flash = mean > 200;
    if (flash) S.brightFrames++;
    if (flash && !wasFlash && testPattern) {
      S.flashes.push(shownAt);
      if (S.flashes.length > 100) S.flashes.shift();
    }
    wasFlash = flash;
    video.requestVideoFrameCallback(onFrame);
  }

  // The first frame of a reply's speech is on screen: voice-to-face latency from the end of the user's speech.
  function faceShown(pending, shownAt, exact) {
    const turn = { utterance_id: pending.utterance_id, turn_id: pending.turn_id, face_at: shownAt, exact };
    const end = pending.speech_end;
    if (end != null) {
      turn.voice_to_face_ms = Math.round(shownAt - end);
      S.latencies.push(turn.voice_to_face_ms);
      $("latency").textContent = `voice → face: ${turn.voice_to_face_ms} ms`;
      send({ type: "latency", voice_to_face_ms: turn.voice_to_face_ms, utterance_id: pending.utterance_id });
    }
    S.turns.push(turn);
    log({ type: "face", ...turn });
  }

  function userSpeechEnd(receivedAt) {
    // The end of the user's last spoken segment before the reply started (or the speech still going on).
    let end = null;
    for (const seg of S.mic.segments) if (seg.end <= receivedAt) end = seg.end;
    if (micInSpeech && S.mic.lastLoudAt != null && S.mic.lastLoudAt <= receivedAt) end = S.mic.lastLoudAt;
    if (end == null || receivedAt - end > 30000 || lastTypedAt > end) return null;
    return end;
  }

  // -- data channel ------------------------------------------------------------------------------------
  function send(message) {
    if (dc && dc.readyState === "open") dc.send(JSON.stringify(message));
  }

  function onMessage(msg) {
    log(msg.type === "reply.text" ? { type: msg.type } : msg);
    switch (msg.type) {
      case "hello":
        S.hello = msg;
        S.resumeId = msg.resume_id || S.resumeId;
        if (msg.rtp_origin != null) S.rtpOrigin = msg.rtp_origin;
        break;
      case "clock":
        S.rtpOrigin = msg.rtp_origin;
        break;
      case "user.started_speaking":
        S.userSpeaking = true;
        break;
      case "user.stopped_speaking":
        S.userSpeaking = false;
        break;
      case "transcript":
        setCaption("user", msg.text, !msg.final);
        if (msg.final && msg.text) S.captions.push({ role: "user", text: msg.text, typed: !!msg.typed });
        break;
      case "reply.text":
        if (msg.turn_id !== replyTurn) { replyTurn = msg.turn_id; replyText = ""; }
        replyText += msg.delta;
        setCaption("replica", replyText.trim(), false);
        break;
      case "reply.done":
        if (msg.text) setCaption("replica", msg.text.trim(), false);
        break;
      case "replica.started_speaking": {
        S.replicaSpeaking = true;
        $("speaking").hidden = false;
        const receivedAt = performance.now();
        const voiced = String(msg.utterance_id || "").startsWith("turn-");
        S.pendingFace = { pts_us: msg.pts_us, utterance_id: msg.utterance_id, turn_id: msg.turn_id,
          speech_end: voiced ? userSpeechEnd(receivedAt) : null };
        break;
      }
      case "replica.stopped_speaking":
        S.replicaSpeaking = false;
        $("speaking").hidden = true;
        if (msg.text) {
          S.captions.push({ role: "replica", text: msg.text, interrupted: !!msg.interrupted });
          setCaption("replica", msg.text + (msg.interrupted ? " …" : ""), false);
        }
        break;
      case "latency.server":
        S.serverLatencies.push(msg.voice_to_face_ms);
        break;
      case "ended":
        S.ended = true;
        S.endReason = msg.reason;
        setStatus("Ended", "ended");
        showOverlay(msg.reason === "hangup" ? "You left the conversation." : "The conversation has ended.");
        stopMedia();
        break;
      case "error":
        S.errors.push(msg.message);
        break;
      default:
        break;
    }
  }

  // -- peer connection ---------------------------------------------------------------------------------
  function waitIceGathering(conn, timeoutMs) {
    if (conn.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => { conn.removeEventListener("icegatheringstatechange", check); resolve(); };
      const check = () => { if (conn.iceGatheringState === "complete") done(); };
      conn.addEventListener("icegatheringstatechange", check);
      setTimeout(done, timeoutMs);
    });
  }

  function buildPeerConnection() {
    const conn = new RTCPeerConnection({ iceServers });
    conn.addTrack(micTrack, localStream);
    if (camTrack) conn.addTransceiver(camTrack, { direction: "sendrecv", streams: [localStream] });
    else conn.addTransceiver("video", { direction: "recvonly" });
    const channel = conn.createDataChannel("parley", { ordered: true });
    channel.onmessage = (e) => { try { onMessage(JSON.parse(e.data)); } catch (err) { log({ type: "bad_message" }); } };
    const remote = new MediaStream();
    conn.ontrack = (e) => {
      remote.addTrack(e.track);
      const video = $("face");
      if (video.srcObject !== remote) video.srcObject = remote;
      video.play().catch(() => showOverlay("Click to start the conversation.", "Start", startPlayback));
      if (e.track.kind === "audio") {
        if (remoteMeter) remoteMeter.disconnect();
        remoteMeter = meter(new MediaStream([e.track]), 0.1, onRemoteBlocks);
        watchPlayout(e.track);
      }
    };
    conn.onconnectionstatechange = () => {
      if (conn !== pc) return;
      const state = conn.connectionState;
      log({ type: "connection", state });
      if (state === "connected") {
        clearTimeout(reconnectTimer);
        S.connected = true;
        S.connections++;
        reconnecting = false;
        setStatus(S.muted ? "Connected · muted" : "Connected", "connected");
        primeLipSync(conn);
        if (!S.ended && !S.error) hideOverlay();
      } else if (state === "disconnected") {
        S.connected = false;
        setStatus("Connection unstable…", "reconnecting");
        clearTimeout(reconnectTimer);
        reconnectTimer = setTimeout(() => reconnect("disconnected"), 2500);
      } else if (state === "failed") {
        S.connected = false;
        reconnect("failed");
      }
    };
    pc = conn;
    dc = channel;
    return conn;
  }

  // Lip sync from the first second: the browser's A/V synchronizer delays the video to match the audio
  // jitter buffer, but only a little per second. Prime the video playout delay with the audio receiver's
  // current jitter-buffer delay so the two start aligned; the synchronizer then fine-tunes.
  async function primeLipSync(conn) {
    const last = {};
    for (let i = 0; i < 40 && conn === pc && conn.connectionState !== "closed"; i++) {
      await new Promise((r) => setTimeout(r, i < 20 ? 500 : 2000));
      const receivers = conn.getReceivers();
      const video = receivers.find((r) => r.track && r.track.kind === "video");
      if (!video || !("jitterBufferTarget" in video)) return;
      (await conn.getStats()).forEach((r) => {
        if (r.type === "inbound-rtp" && r.kind === "audio") {
          const prev = last.audio;
          if (prev && r.jitterBufferEmittedCount > prev.n) {
            const ms = (1000 * (r.jitterBufferDelay - prev.d)) / (r.jitterBufferEmittedCount - prev.n);
            S.audioJitterMs = Math.round(ms);
            try { video.jitterBufferTarget = Math.max(0, Math.min(400, Math.round(ms))); } catch (e) { /* ignore */ }
          }
          last.audio = { d: r.jitterBufferDelay, n: r.jitterBufferEmittedCount };
        }
      });
    }
  }

  async function negotiate(conn, resume) {
    const offer = await conn.createOffer();
    await conn.setLocalDescription(offer);
    await waitIceGathering(conn, 3000);
    const body = { type: "offer", sdp: conn.localDescription.sdp, token };
    if (resume && S.resumeId) body.resume_id = S.resumeId;
    if (testPattern) body.test_pattern = true;
    const res = await fetch(api("offer"), {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const answer = await res.json().catch(() => ({}));
    if (!res.ok) {
      const err = new Error(answer.message || `HTTP ${res.status}`);
      err.status = res.status;
      err.code = answer.error;
      throw err;
    }
    S.resumeId = answer.resume_id;
    await conn.setRemoteDescription({ type: "answer", sdp: answer.sdp });
  }

  async function reconnect(reason) {
    if (S.ended || hungUp || reconnecting || S.error) return;
    reconnecting = true;
    S.reconnects++;
    log({ type: "reconnect", reason });
    setStatus("Reconnecting…", "reconnecting");
    for (let attempt = 0; attempt < 8 && !S.ended && !hungUp; attempt++) {
      const old = pc;
      try {
        const conn = buildPeerConnection();
        await negotiate(conn, true); // the gateway swaps its side over to the new connection
        if (old && old !== conn) old.close();
        return; // connectionstatechange -> connected clears `reconnecting`
      } catch (err) {
        if (err.status && ![429, 500, 502, 503, 504].includes(err.status)) {
          reconnecting = false;
          fail(err.status === 409 ? "connection_lost" : err.code, err.message);
          return;
        }
        await new Promise((r) => setTimeout(r, Math.min(8000, 500 * 2 ** attempt)));
      }
    }
    reconnecting = false;
    fail("connection_lost");
  }

  function stopMedia() {
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    if (pc) pc.close();
  }

  function startPlayback() {
    hideOverlay();
    $("face").play().catch(() => {});
    if (audioCtx) audioCtx.resume().catch(() => {});
  }

  function leave() {
    if (hungUp) return;
    hungUp = true;
    send({ type: "hangup" });
    const payload = JSON.stringify({ token, resume_id: S.resumeId });
    fetch(api("leave"), { method: "POST", body: payload, keepalive: true }).catch(() => {});
    setTimeout(stopMedia, 100);
    S.ended = true;
    S.endReason = "hangup";
    setStatus("Left", "ended");
    showOverlay("You left the conversation.", "Rejoin", () => location.reload());
  }

  // -- controls ----------------------------------------------------------------------------------------
  function toggleMute() {
    if (!micTrack) return;
    S.muted = !S.muted;
    micTrack.enabled = !S.muted;
    $("mute").setAttribute("aria-pressed", String(S.muted));
    $("mute").textContent = S.muted ? "Unmute" : "Mute";
    if (S.connected) setStatus(S.muted ? "Connected · muted" : "Connected");
  }

  function toggleCamera() {
    if (!camTrack) return;
    camTrack.enabled = !camTrack.enabled;
    S.camera = camTrack.enabled;
    $("self").hidden = !S.camera;
    $("camera").setAttribute("aria-pressed", String(!S.camera));
  }

  function sendText(e) {
    e.preventDefault();
    const input = $("message-text");
    const text = input.value.trim();
    if (!text) return;
    lastTypedAt = performance.now();
    send({ type: "message", text });
    input.value = "";
  }

  // WebRTC receive statistics (jitter buffers, estimated playout clocks of both tracks, decode counts).
  S.rtcStats = async () => {
    if (!pc) return null;
    const out = { audioContext: audioCtx && { baseLatency: audioCtx.baseLatency, outputLatency: audioCtx.outputLatency } };
    const reports = await pc.getStats();
    reports.forEach((r) => {
      if (r.type === "inbound-rtp") {
        out[r.kind] = {
          estimatedPlayoutTimestamp: r.estimatedPlayoutTimestamp,
          jitterBufferDelayMs: r.jitterBufferEmittedCount ? (1000 * r.jitterBufferDelay) / r.jitterBufferEmittedCount : null,
          framesDecoded: r.framesDecoded, framesDropped: r.framesDropped, packetsLost: r.packetsLost,
          totalSamplesReceived: r.totalSamplesReceived, concealedSamples: r.concealedSamples,
          codec: r.codecId && reports.get(r.codecId) ? reports.get(r.codecId).mimeType : null,
        };
      }
    });
    out.at = performance.now();
    return out;
  };

  // Test hooks (used by the browser tests; harmless in normal use).
  S.simulateNetworkBlip = () => { if (pc) { pc.close(); reconnect("blip"); } }; // a dead connection
  S.mute = toggleMute;
  S.interrupt = () => send({ type: "interrupt" });
  S.sendText = (text) => { lastTypedAt = performance.now(); send({ type: "message", text }); };
  S.hangup = leave;

  // -- start -------------------------------------------------------------------------------------------
  async function getMedia() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) throw Object.assign(new Error(), { code: "no_media" });
    try {
      localStream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      });
    } catch (err) {
      const code = err.name === "NotAllowedError" || err.name === "SecurityError" ? "mic_denied"
        : err.name === "NotFoundError" || err.name === "OverconstrainedError" ? "no_mic" : "no_media";
      throw Object.assign(new Error(err.message), { code });
    }
    micTrack = localStream.getAudioTracks()[0];
    if (wantCamera) {
      try {
        const cam = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480, frameRate: 15 } });
        camTrack = cam.getVideoTracks()[0];
        localStream.addTrack(camTrack);
        S.camera = true;
        $("self").srcObject = new MediaStream([camTrack]);
        $("self").hidden = false;
      } catch (err) {
        log({ type: "camera_unavailable", name: err.name });
      }
    }
    $("camera").disabled = !camTrack;
  }

  async function start() {
    $("mute").onclick = toggleMute;
    $("camera").onclick = toggleCamera;
    $("interrupt").onclick = () => send({ type: "interrupt" });
    $("hangup").onclick = leave;
    $("message").onsubmit = sendText;
    addEventListener("pagehide", () => {
      if (!hungUp && S.resumeId) navigator.sendBeacon(api("leave"), JSON.stringify({ token, resume_id: S.resumeId }));
    });
    if (!conversationId) return fail("unknown_conversation");
    if (!token) return fail("missing_token");
    try {
      const cfg = await fetch("/api/config").then((r) => r.json());
      iceServers = cfg.ice_servers || [];
      setStatus("Waiting for the microphone…", "media");
      await getMedia();
      await ensureAudio();
      meter(new MediaStream([micTrack]), 0.5, onMicBlocks);
      $("face").requestVideoFrameCallback(onFrame);
      setStatus("Connecting…", "connecting");
      await negotiate(buildPeerConnection(), false);
    } catch (err) {
      fail(err.code, err.message);
    }
  }

  start();
})();
