// The inbox's live updates: the queue and a request's page follow /api/v1/events and fetch their fragment
// again from the server, which renders it with the same template as the page. No framework, no build step.
"use strict";

(function () {
  const region = document.querySelector("[data-live]");
  if (!region || !window.EventSource) {
    return;
  }
  const state = document.querySelector("[data-live-state]");
  const onlyRequest = region.dataset.request || null;
  let fetching = null;
  let again = false;

  function say(text) {
    if (state) {
      state.textContent = text;
    }
  }

  async function refresh() {
    if (fetching) {
      again = true; // changes arriving mid-fetch are fetched once more after it
      return;
    }
    fetching = fetch(region.dataset.live, { credentials: "same-origin", headers: { Accept: "text/html" } });
    try {
      const response = await fetching;
      if (response.status === 401) {
        window.location.reload(); // signed out meanwhile: the page asks to sign in again
        return;
      }
      if (!response.ok) {
        say("Could not update: reload the page.");
        return;
      }
      const html = await response.text();
      // Server-rendered and escaped like the page itself; scripts inside would not run under the CSP.
      const template = document.createElement("template");
      template.innerHTML = html;
      // A selection survives the rows being drawn again: the boxes still there stay ticked.
      const ticked = new Set(
        Array.from(region.querySelectorAll("input[name=pick]:checked"), (box) => box.value),
      );
      template.content.querySelectorAll("input[name=pick]").forEach((box) => {
        box.checked = ticked.has(box.value);
      });
      region.replaceChildren(template.content);
      const record = region.querySelector("[data-decidable]");
      if (record && record.dataset.decidable === "false") {
        const decide = document.getElementById("decide");
        if (decide) {
          decide.remove(); // decided elsewhere: nothing left to decide here
        }
      }
    } finally {
      fetching = null;
      if (again) {
        again = false;
        refresh();
      }
    }
  }

  const events = new EventSource("/api/v1/events");
  events.onopen = function () {
    say(onlyRequest ? "Live: updates as it is decided." : "Live: updates as requests arrive and are decided.");
  };
  events.onerror = function () {
    say("Reconnecting…");
  };
  events.onmessage = function (message) {
    let change;
    try {
      change = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    if (onlyRequest && change.request_id !== onlyRequest) {
      return;
    }
    refresh();
  };
})();
