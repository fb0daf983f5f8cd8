// What this browser chose for every page, applied before the first paint so nothing flashes:
// a classic script in <head> (not a module, which would run after the page is drawn).
//   theme: "auto" (follow the system), "light" or "dark" -- the key and values Django's admin
//          uses too, so the choice holds there as well; chat.css reads <html data-theme>.
//   chat.demoNoticeDismissed: the demo model's notice was closed (<html class="demo-dismissed">).
(function () {
  var root = document.documentElement;
  try {
    var theme = localStorage.getItem("theme");
    if (theme === "light" || theme === "dark") root.dataset.theme = theme;
    if (localStorage.getItem("chat.demoNoticeDismissed")) root.classList.add("demo-dismissed");
  } catch (e) {
    // Storage blocked (a privacy setting): follow the system, show the notice.
  }
})();
