// phigate console: the only script besides htmx (no inline code anywhere; the CSP forbids it).
//
// 1. Live inbox: the server sends an SSE event whenever a review opens or changes; the inbox
//    section (hx-trigger="reviews-changed from:body") then fetches its rows again.
// 2. Replay: "Play" reveals a session's steps one after another, "Step" one at a time.

const inbox = document.getElementById('inbox');
const live = document.getElementById('live-status');
if (inbox && window.EventSource) {
  const events = new EventSource('/console/events');
  const say = (text, state) => {
    if (live) live.textContent = text;
    document.body.dataset.live = state;
  };
  events.addEventListener('open', () => {
    say('Live updates: on.', 'on');
    // Anything that happened while (re)connecting.
    document.body.dispatchEvent(new CustomEvent('reviews-changed'));
  });
  events.addEventListener('error', () => say('Live updates: reconnecting…', 'off'));
  events.addEventListener('reviews', () => {
    document.body.dispatchEvent(new CustomEvent('reviews-changed'));
  });
}

const timeline = document.getElementById('timeline');
if (timeline) {
  const steps = Array.from(timeline.querySelectorAll('li.step'));
  const status = document.getElementById('replay-status');
  let shown = steps.length;
  let timer = null;
  const render = () => {
    steps.forEach((s, i) => { s.hidden = i >= shown; });
    if (status) status.textContent = `Showing ${shown} of ${steps.length} steps`;
  };
  const stepOnce = () => {
    if (shown < steps.length) shown += 1;
    render();
    if (shown >= steps.length && timer) { clearInterval(timer); timer = null; }
  };
  const play = document.getElementById('replay-play');
  const step = document.getElementById('replay-step');
  if (play) {
    play.hidden = false;
    play.addEventListener('click', () => {
      shown = 0;
      render();
      if (timer) clearInterval(timer);
      timer = setInterval(stepOnce, 700);
    });
  }
  if (step) {
    step.hidden = false;
    step.addEventListener('click', () => {
      if (timer) { clearInterval(timer); timer = null; }
      if (shown >= steps.length) shown = 0;
      stepOnce();
    });
  }
}
