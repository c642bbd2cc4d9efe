// AudioWorklet: per 128-sample block, the RMS level and the first sample above a threshold, with the
// block's context time, posted in small batches (the page turns them into speech / onset times).
class LevelMeter extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.threshold = (options.processorOptions && options.processorOptions.threshold) || 0.1;
    this.batch = [];
  }

  process(inputs) {
    const input = inputs[0];
    const ch = input && input[0];
    if (ch && ch.length) {
      let sum = 0;
      let first = -1;
      for (let i = 0; i < ch.length; i++) {
        const x = ch[i];
        sum += x * x;
        if (first < 0 && (x > this.threshold || x < -this.threshold)) first = i;
      }
      this.batch.push([currentTime, Math.sqrt(sum / ch.length), first]);
      if (this.batch.length >= 4) {
        this.port.postMessage({ rate: sampleRate, blocks: this.batch });
        this.batch = [];
      }
    }
    return true;
  }
}

registerProcessor("level-meter", LevelMeter);
