"""Citations of the datasets this library loads and trains on: the one home for them.

`BIBTEX[name]` feeds dataset cards and `datasets.DatasetInfo`; `TEXT[name]` is the one-line form used in model cards.
"""

from __future__ import annotations

BIBTEX: dict[str, str] = {
    "kermany": """@article{kermany2018identifying,
  title={Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep Learning},
  author={Kermany, Daniel S. and Goldbaum, Michael and Cai, Wenjia and others},
  journal={Cell}, volume={172}, number={5}, pages={1122--1131}, year={2018}
}""",
    "medmnist": """@article{yang2023medmnist,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and others},
  journal={Scientific Data}, volume={10}, number={1}, pages={41}, year={2023}
}""",
    "nih": """@inproceedings{wang2017chestxray8,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification and
         Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi and Summers, Ronald M.},
  booktitle={CVPR}, pages={2097--2106}, year={2017}
}""",
    "covid": """@article{cohen2020covid,
  title={COVID-19 Image Data Collection: Prospective Predictions Are the Future},
  author={Cohen, Joseph Paul and Morrison, Paul and Dao, Lan and Roth, Karsten and Duong, Tim Q and Ghassemi, Marzyeh},
  journal={Machine Learning for Biomedical Imaging}, volume={1}, pages={1--38}, year={2020}
}""",
    "indiana": """@article{demner2016preparing,
  title={Preparing a collection of radiology examinations for distribution and retrieval},
  author={Demner-Fushman, Dina and Kohli, Marc D. and Rosenman, Marc B. and others},
  journal={Journal of the American Medical Informatics Association}, volume={23}, number={2}, pages={304--310},
  year={2016}
}""",
    "jsrt": """@article{shiraishi2000development,
  title={Development of a digital image database for chest radiographs with and without a lung nodule},
  author={Shiraishi, Junji and Katsuragawa, Shigehiko and Ikezoe, Junpei and others},
  journal={American Journal of Roentgenology}, volume={174}, number={1}, pages={71--74}, year={2000}
}""",
}

TEXT: dict[str, str] = {
    "kermany": "Kermany D. et al. Identifying medical diagnoses and treatable diseases by image-based deep learning. "
    "Cell 172(5), 2018. Data: doi:10.17632/rscbjbr9sj.2 (CC BY 4.0).",
    "medmnist": "Yang J. et al. MedMNIST v2. Scientific Data 10, 41 (2023).",
    "nih": "Wang X. et al. ChestX-ray8: Hospital-scale chest X-ray database and benchmarks. CVPR 2017 "
    "(NIH Clinical Center).",
    "covid": "Cohen J.P. et al. COVID-19 image data collection. arXiv:2006.11988, 2020 (per-image licenses).",
    "indiana": "Demner-Fushman D. et al. Preparing a collection of radiology examinations for distribution and "
    "retrieval. JAMIA 23(2), 2016.",
    "jsrt": "Shiraishi J. et al. Development of a digital image database for chest radiographs with and without a "
    "lung nodule. AJR 174(1), 2000 (research and education use).",
}
