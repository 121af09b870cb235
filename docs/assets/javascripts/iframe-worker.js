/* Lets the site's search run when a page is opened from the file system (file://), offline.
 *
 * Browsers refuse `new Worker(url)` on file:// pages, and mkdocs-material's search runs in a Worker. Its offline
 * plugin would load the `iframe-worker` shim from unpkg.com; this is a small local stand-in (it is named
 * iframe-worker*.js so that the plugin does not add the remote one): on file:// only, `Worker` becomes a hidden
 * iframe that runs the same script, and messages travel with window.postMessage in both directions.
 * Over http(s) nothing changes. */
(function () {
  if (location.protocol !== "file:" || window.__miniaiWorkerShim) return;
  window.__miniaiWorkerShim = true;
  // the frame's own postMessage is replaced (it answers the page): the page posts with the frame's original one
  const post = (win, data) => win.__iframeWorkerPost(data, "*");
  class IframeWorker extends EventTarget {
    constructor(url) {
      super();
      this.onmessage = null;
      this.onerror = null;
      this._queue = [];
      this._ready = false;
      const src = new URL(url, document.baseURI).href;
      const frame = document.createElement("iframe");
      frame.style.display = "none";
      frame.setAttribute("aria-hidden", "true");
      // inside the frame: postMessage answers the page, importScripts loads scripts one after the other
      const boot =
        "self.__iframeWorkerPost = self.postMessage.bind(self);" +
        "self.postMessage = function (d) { parent.postMessage({__iframeWorker: d}, '*'); };" +
        "self.importScripts = function () { for (const u of arguments) {" +
        "  const x = new XMLHttpRequest(); x.open('GET', u, false); x.send(); (0, eval)(x.responseText); } };";
      frame.srcdoc = "<!doctype html><script>" + boot + "<\/script><script src=\"" + src + "\"><\/script>" +
        "<script>parent.postMessage({__iframeWorkerReady: true}, '*');<\/script>";
      window.addEventListener("message", (e) => {
        if (e.source !== frame.contentWindow || typeof e.data !== "object" || e.data === null) return;
        if (e.data.__iframeWorkerReady) {
          this._ready = true;
          for (const m of this._queue) post(frame.contentWindow, m);
          this._queue = [];
        } else if ("__iframeWorker" in e.data) {
          const ev = new MessageEvent("message", {data: e.data.__iframeWorker});
          if (this.onmessage) this.onmessage(ev);
          this.dispatchEvent(ev);
        }
      });
      this._frame = frame;
      (document.body || document.documentElement).appendChild(frame);
    }
    postMessage(data) {
      if (this._ready) post(this._frame.contentWindow, data);
      else this._queue.push(data);
    }
    terminate() { this._frame.remove(); }
  }
  window.Worker = IframeWorker;
})();
