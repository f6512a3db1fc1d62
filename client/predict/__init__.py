"""Apply an exported global model at a site: `consortia predict`, with the training preprocessing,
sliding-window inference, masks in each input's geometry (NIfTI, DICOM SEG) or class scores.

The modules, one concept each:

- ``batch``: Predict a list of images into an output folder, one image at a time; a failed image
  is reported and the rest go on.
- ``cli``: `consortia predict`: apply an exported global model to a site's images.
- ``exported``: An exported model as `consortia predict` loads it: its card and a forward
  function.
- ``geometry``: Take a prediction made on the model's grid back to the input image's own voxel
  grid.
- ``inference``: Predict one image: read it as training does, prepare it, infer, map back to its
  grid.
- ``writers``: Write predictions: NIfTI masks on the input's grid, DICOM SEG beside DICOM input,
  and a CSV of class scores.
"""

from typing import TYPE_CHECKING

from consortia.common.faces import lazy_face

if TYPE_CHECKING:
    from consortia.client.predict.batch import (
        SCORES_FILE as SCORES_FILE,
    )
    from consortia.client.predict.batch import (
        PredictReport as PredictReport,
    )
    from consortia.client.predict.batch import (
        predict_images as predict_images,
    )
    from consortia.client.predict.exported import (
        CARD_FILE as CARD_FILE,
    )
    from consortia.client.predict.exported import (
        CARD_SCHEMA as CARD_SCHEMA,
    )
    from consortia.client.predict.exported import (
        ExportedModel as ExportedModel,
    )
    from consortia.client.predict.exported import (
        InferenceSettings as InferenceSettings,
    )
    from consortia.client.predict.exported import (
        ModelCard as ModelCard,
    )
    from consortia.client.predict.geometry import (
        model_grid_shape as model_grid_shape,
    )
    from consortia.client.predict.geometry import (
        to_input_grid as to_input_grid,
    )
    from consortia.client.predict.inference import (
        InputImage as InputImage,
    )
    from consortia.client.predict.inference import (
        Prediction as Prediction,
    )
    from consortia.client.predict.inference import (
        Predictor as Predictor,
    )
    from consortia.client.predict.inference import (
        read_input as read_input,
    )
    from consortia.client.predict.writers import (
        output_stem as output_stem,
    )
    from consortia.client.predict.writers import (
        write_dicom_seg as write_dicom_seg,
    )
    from consortia.client.predict.writers import (
        write_nifti_mask as write_nifti_mask,
    )
    from consortia.client.predict.writers import (
        write_scores_csv as write_scores_csv,
    )

__all__ = [
    "CARD_FILE",
    "CARD_SCHEMA",
    "SCORES_FILE",
    "ExportedModel",
    "InferenceSettings",
    "InputImage",
    "ModelCard",
    "PredictReport",
    "Prediction",
    "Predictor",
    "model_grid_shape",
    "output_stem",
    "predict_images",
    "read_input",
    "to_input_grid",
    "write_dicom_seg",
    "write_nifti_mask",
    "write_scores_csv",
]

_EXPORTS = {
    "CARD_FILE": "exported",
    "CARD_SCHEMA": "exported",
    "ExportedModel": "exported",
    "InferenceSettings": "exported",
    "InputImage": "inference",
    "ModelCard": "exported",
    "PredictReport": "batch",
    "Prediction": "inference",
    "Predictor": "inference",
    "SCORES_FILE": "batch",
    "model_grid_shape": "geometry",
    "output_stem": "writers",
    "predict_images": "batch",
    "read_input": "inference",
    "to_input_grid": "geometry",
    "write_dicom_seg": "writers",
    "write_nifti_mask": "writers",
    "write_scores_csv": "writers",
}

__getattr__, __dir__ = lazy_face(__name__, _EXPORTS)
