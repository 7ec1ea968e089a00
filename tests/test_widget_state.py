"""The widget's shared state (napari_cuts._widget.state): plain Python, no Qt, no napari.

These run without a display: the state must not import Qt or napari (the rule of the
house for the core holds for it), and its notifications are what the widget's parts
react to instead of calling each other through the panel.
"""

import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from napari_cuts._widget.objects import ObjectSet, Prompts
from napari_cuts._widget.settings import Settings
from napari_cuts._widget.state import Signal, WidgetState


def _record(state, *names):
    seen = []
    for n in names:
        state.on(n, lambda v, n=n: seen.append((n, v)))
    return seen


def _result(n_levels=4, shape=(6, 8)):
    hier = SimpleNamespace(n_levels=n_levels, shape=shape)
    return SimpleNamespace(hierarchy=hier)


def test_state_imports_neither_qt_nor_napari():
    code = ("import sys; import napari_cuts._widget.state as s; "
            "bad = [m for m in sys.modules if m.split('.')[0] in "
            "('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'vispy', 'torch')]; "
            "print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_setting_a_field_notifies_its_listeners_once_and_only_on_a_change():
    st = WidgetState()
    seen = _record(st, "level", "persistent")
    everything = []
    st.any_change.connect(lambda name, value: everything.append(name))
    st.level = 3
    st.level = 3                       # the same value: nobody is told
    st.persistent = True
    st.level = 0
    assert seen == [("level", 3), ("persistent", True), ("level", 0)]
    assert everything == ["level", "persistent", "level"]


def test_unknown_fields_are_refused_so_a_typo_cannot_hide_state():
    st = WidgetState()
    with pytest.raises(AttributeError):
        st.levle = 2
    with pytest.raises(AttributeError):
        st.on("levle", print)
    with pytest.raises(AttributeError):
        WidgetState(levle=1)


def test_results_added_one_by_one_are_announced_and_give_the_levels():
    st = WidgetState()
    seen = []
    st.on("results", lambda v: seen.append(sorted(v)))   # the keys when told
    assert not st.has_results and st.n_levels() == 0
    st.add_result(2, _result(5))
    st.add_result(0, _result(7))
    assert seen == [[2], [0, 2]]
    assert st.has_results and st.n_levels() == 7
    st.clear_results(source=None)
    assert st.results == {} and not st.has_results
    assert len(seen) == 3


def test_clear_results_forgets_the_objects_and_tells_each_field_once():
    st = WidgetState()
    st.objects = ObjectSet((4, 4))
    st.objects.set_prompts(Prompts().add((1, 1), True), 0)
    st.add_result(0, _result())
    st.object_message = "Solving..."
    seen = _record(st, "results", "objects", "object_message", "source")
    src = SimpleNamespace(one_volume=False, volume=False, slices=[np.zeros((4, 4))],
                          shape=(4, 4))
    st.clear_results(src)
    assert st.objects is None and st.current is None and st.mask is None
    assert st.source is src and st.object_message == ""
    assert sorted(n for n, _ in seen) == ["object_message", "objects", "results", "source"]
    assert st.result_shape() == (4, 4)


def test_objects_changed_reaches_listeners_with_the_current_object():
    st = WidgetState(objects=ObjectSet((5, 5)))
    currents = []
    st.on("objects", lambda objs: currents.append(None if objs.current is None
                                                   else objs.current.id))
    objs = st.objects
    objs.set_prompts(Prompts().add((2, 2), True), 1)
    mask = np.zeros((5, 5), bool)
    mask[1:3, 1:3] = True
    objs.set_mask(objs.current_id, objs.current.prompts, 1, mask)
    st.objects_changed()
    second = objs.new_object("second")
    st.objects_changed()
    assert currents == [1, second]
    assert st.current.id == second and st.mask is None
    objs.select(1)
    assert st.mask is not None and int(st.mask.sum()) == 4


def test_click_level_follows_the_slider_unless_the_persistent_view_is_shown():
    st = WidgetState(level=4)
    assert st.click_level == 4
    st.persistent = True
    assert st.click_level is None


def test_set_announces_after_all_fields_are_set():
    st = WidgetState()
    views = []
    # a listener sees the whole change, not half of it
    st.on("level", lambda v: views.append((st.level, st.persistent)))
    st.set(level=2, persistent=True)
    assert views == [(2, True)]


def test_quietly_drops_notifications_the_caller_shows_itself():
    st = WidgetState()
    seen = _record(st, "level", "job")
    with st.quietly():
        st.level = 5
        st.job = "segmenting"
    assert seen == [] and st.level == 5 and st.busy
    with st.quietly(release=True):
        st.level = 1
        st.level = 2
    assert seen == [("level", 2)]


def test_settings_equal_to_the_shown_ones_are_not_a_change():
    st = WidgetState(settings=Settings(seed=1))
    seen = _record(st, "settings")
    st.settings = Settings(seed=1)
    st.settings = Settings(seed=2)
    assert [v.seed for _, v in seen] == [2]


def test_a_failing_listener_does_not_stop_the_others(caplog):
    sig = Signal()
    got = []

    def boom(x):
        raise ValueError("listener bug")

    sig.connect(boom)
    sig.connect(got.append)
    sig.connect(got.append)             # connected once only
    sig.emit(7)
    assert got == [7] and len(sig) == 2
    assert "listener failed" in caplog.text
    sig.disconnect(boom)
    sig.emit(8)
    assert got == [7, 8]


def test_off_stops_the_listener():
    st = WidgetState()
    seen = []
    fn = st.on("job", seen.append)
    st.job = "training"
    assert st.busy
    st.off("job", fn)
    st.job = None
    assert seen == ["training"] and not st.busy
