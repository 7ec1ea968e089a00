"""The object list of the CUTS dock widget (Qt only; the objects live in the model).

One row per object: its colour (the swatch is the colour of its mask in "CUTS mask"
and "CUTS labels") and name (double-click to rename), label id, prompts (how many:
"3: 2+ 1-", with the strokes painted), level (the level its prompts are solved at, or
"auto": the tool's own) and size (mm\u00b2 or mL where the image has a voxel size, else
pixels). The selected row is the object that prompts go into. Buttons: New object,
Clear prompts, Delete, Shrink ``[``, Grow ``]``, Undo, Redo, Export objects..., Save
session...; under them the solver's messages (a prompt it cannot take).

The list listens to the shared state (``state.objects`` and ``state.object_message``)
and refills itself when they change; its buttons call the ``actions`` it was given.
"""

from __future__ import annotations

from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel,
                            QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

COLUMNS = ("Object", "Id", "Prompts", "Level", "Size")


def _icon(rgba) -> QIcon:
    pm = QPixmap(12, 12)
    pm.fill(QColor.fromRgbF(*[float(v) for v in rgba]))
    return QIcon(pm)


#: The actions the list's buttons and edits call (``actions[name]``).
ACTIONS = ("new", "clear", "delete", "shrink", "grow", "undo", "redo", "export_objects",
           "save_session", "rename", "select")


class ObjectList(QWidget):
    """Table of the objects in ``state`` and its buttons.

    ``actions``: callables named as in :data:`ACTIONS` (``rename(id, name)``,
    ``select(id)``, the others without arguments); ``stats(id)``: an object's size
    (``pixels``, ``mm2`` / ``ml``)."""

    def __init__(self, state, actions: dict, stats, parent=None) -> None:
        super().__init__(parent)
        missing = set(ACTIONS) - set(actions)
        if missing:
            raise ValueError(f"ObjectList needs the actions {sorted(missing)}")
        self.state = state
        self.actions = dict(actions)
        self.stats = stats
        self._filling = False
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.verticalHeader().setVisible(False)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.setMaximumHeight(150)
        self.table.itemChanged.connect(self._on_item_changed)
        self.table.itemSelectionChanged.connect(self._on_selection)
        lay.addWidget(self.table)

        act = self.actions

        def button(text, tip, name):
            b = QPushButton(text)
            b.setToolTip(tip)
            b.clicked.connect(lambda *_: act[name]())
            return b

        self.new_btn = button("New object", "Start the next object (the next label id); "
                              "prompts then go into it. Each object keeps its own.",
                              "new")
        self.clear_btn = button("Clear prompts", "The selected object starts over: its "
                                "points and scribbles go, and its mask.", "clear")
        self.delete_btn = button("Delete", "Delete the selected object.", "delete")
        self.shrink_btn = button("Shrink [", "The slider one step down the lineage of the "
                                 "object's first positive point (the largest strictly "
                                 "smaller structure), the object solved there (key [).",
                                 "shrink")
        self.grow_btn = button("Grow ]", "The slider one step up the lineage of the object's "
                               "first positive point (the next merge), the object solved "
                               "there (key ]).", "grow")
        self.undo_btn = button("Undo", "Undo the last change of the prompts or objects "
                               "(ctrl+z).", "undo")
        self.redo_btn = button("Redo", "Redo (ctrl+shift+z).", "redo")
        self.export_btn = button("Export objects...", "All objects as one label map keeping "
                                 "their ids (NIfTI or PNG, names in a JSON beside it), or a "
                                 "DICOM SEG with one segment per object.",
                                 "export_objects")
        self.session_btn = button("Save session...", "Write a folder that reopens through "
                                  "File > Open: image, levels, objects, without recomputing.",
                                  "save_session")
        for group in ((self.new_btn, self.clear_btn, self.delete_btn),
                      (self.shrink_btn, self.grow_btn, self.undo_btn, self.redo_btn),
                      (self.export_btn, self.session_btn)):
            row = QHBoxLayout()
            for b in group:
                row.addWidget(b)
            lay.addLayout(row)
        self.message = QLabel("")
        self.message.setWordWrap(True)
        lay.addWidget(self.message)
        state.on("objects", self._on_objects)
        state.on("object_message", self._on_message)

    def _on_objects(self, _objects) -> None:
        try:
            self.show_objects()
        except RuntimeError:  # the widget is gone
            pass

    def _on_message(self, text: str) -> None:
        try:
            self.message.setText(text)
        except RuntimeError:
            pass

    # ------------------------------------------------------------------ rows
    def show_objects(self) -> None:
        """Fill the table from ``state.objects``."""
        from .settings import physical_scale

        model = self.state.objects
        src = self.state.source
        self._filling = True
        try:
            self.table.setRowCount(0 if model is None else len(model.objects))
            if model is None:
                return
            physical = physical_scale(src.layer) if src is not None else False
            volume = src is not None and src.volume
            for r, obj in enumerate(model.objects):
                st = self.stats(obj.id)
                if physical:
                    size = f"{st['ml']:.2f} mL" if volume else f"{st['mm2']:.1f} mm\u00b2"
                else:
                    size = f"{st['pixels']} px"
                name = QTableWidgetItem(_icon(obj.colour), obj.name)
                self.table.setItem(r, 0, name)
                texts = (str(obj.id), obj.prompts.text(), obj.level_text(), size)
                for c, text in enumerate(texts, start=1):
                    it = QTableWidgetItem(text)
                    it.setFlags(it.flags() & ~_editable())
                    self.table.setItem(r, c, it)
                if obj.id == model.current_id:
                    self.table.selectRow(r)
        finally:
            self._filling = False

    def swatch(self, row: int) -> tuple:
        """The RGBA (0..1) of row ``row``'s colour swatch."""
        img = self.table.item(row, 0).icon().pixmap(12, 12).toImage()
        return tuple(float(v) for v in img.pixelColor(6, 6).getRgbF())

    def row_text(self, row: int) -> tuple:
        return tuple(self.table.item(row, c).text() for c in range(len(COLUMNS)))

    def _id_at(self, row: int):
        it = self.table.item(row, 1)
        return int(it.text()) if it is not None else None

    def _on_item_changed(self, item) -> None:
        if self._filling or item.column() != 0:
            return
        i = self._id_at(item.row())
        if i is not None:
            self.actions["rename"](i, item.text())

    def _on_selection(self) -> None:
        if self._filling:
            return
        rows = {ix.row() for ix in self.table.selectedIndexes()}
        if len(rows) == 1:
            i = self._id_at(rows.pop())
            if i is not None:
                self.actions["select"](i)


def _editable():
    from qtpy.QtCore import Qt

    return Qt.ItemFlag.ItemIsEditable
