"""Reading COCO-style annotation files (COCO instances, RefCOCOg's ``instances.json``, the
MDETR / GLaMM caption files, OVAD) with checks that name the file and the entry at fault.

A COCO-style file is a JSON object with ``images`` (objects with ``id``, ``file_name``,
``width``, ``height``), ``annotations`` (objects with ``id``, ``image_id``, ``bbox`` =
``[x, y, w, h]``, ...) and usually ``categories`` (objects with ``id``, ``name``).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .common import expect_type, list_of_objects, load_json, progress, require


def _key(value, path, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"'{path}': {where} must be a number or a string, got {value!r}")
    return value


class CocoFile:
    """An indexed COCO-style file.

    Attributes:
        data: the parsed JSON object.
        images: ``{image id: image entry}`` in file order.
        anns: ``{image id: [annotation, ...]}`` in file order (images without annotations
            are absent).
        categories: ``{category id: name}`` (empty when the file has no ``categories``).
    """

    def __init__(
        self, path, what: str, *, ann_keys=("id", "image_id", "bbox"), image_keys=("id",), need_categories: bool = False
    ):
        self.path = Path(path)
        self.data = load_json(path, what)
        expect_type(self.data, dict, path, "the top level")
        images = list_of_objects(self.data, "images", path, "'images'")
        annotations = list_of_objects(self.data, "annotations", path, "'annotations'")
        self.images: dict = {}
        for i, img in enumerate(images):
            require(img, image_keys, path, f"'images'[{i}]")
            img_id = _key(img["id"], path, f"'images'[{i}] 'id'")
            if img_id in self.images:
                raise InputError(f"'{path}': image id {img_id!r} appears twice in 'images'")
            self.images[img_id] = img
        self.anns: dict = {}
        seen: set = set()
        for i, ann in enumerate(progress(annotations, f"index {self.path.name}")):
            require(ann, ann_keys, path, f"'annotations'[{i}]")
            if "id" in ann:
                ann_id = _key(ann["id"], path, f"'annotations'[{i}] 'id'")
                if ann_id in seen:
                    raise InputError(f"'{path}': annotation id {ann_id!r} appears twice")
                seen.add(ann_id)
            image_id = _key(ann["image_id"], path, f"annotation {ann.get('id', i)!r} 'image_id'")
            if image_id not in self.images:
                raise InputError(
                    f"'{path}': annotation {ann.get('id', i)!r} refers to image {image_id!r}, which is not in 'images'"
                )
            self.anns.setdefault(image_id, []).append(ann)
        self.categories: dict = {}
        if need_categories or "categories" in self.data:
            for i, cat in enumerate(list_of_objects(self.data, "categories", path, "'categories'")):
                require(cat, ("id", "name"), path, f"'categories'[{i}]")
                expect_type(cat["name"], str, path, f"'categories'[{i}] 'name'")
                self.categories[_key(cat["id"], path, f"'categories'[{i}] 'id'")] = cat["name"]

    def category(self, ann: dict) -> str:
        """The category name of an annotation (InputError when its id is unknown)."""
        if "category_id" not in ann:
            raise InputError(f"'{self.path}': annotation {ann['id']!r} has no 'category_id' key")
        cat_id = _key(ann["category_id"], self.path, f"annotation {ann['id']!r} 'category_id'")
        if cat_id not in self.categories:
            raise InputError(
                f"'{self.path}': annotation {ann['id']!r} has category_id {cat_id!r}, which is not in 'categories'"
            )
        return self.categories[cat_id]

    def file_name(self, img: dict) -> str:
        if "file_name" not in img:
            raise InputError(f"'{self.path}': image {img['id']!r} has no 'file_name' key")
        return expect_type(img["file_name"], str, self.path, f"image {img['id']!r} 'file_name'")
