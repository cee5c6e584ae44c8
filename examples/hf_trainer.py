"""DLDR in a Hugging Face Trainer: a tiny BERT classifier built from a config (nothing downloaded)
trains 16 steps with AdamW while its trajectory is recorded, then 30 steps of P-SGD in the
8-dimensional DLDR subspace.

    pip install -r requirements-integrations.txt
    python examples/hf_trainer.py
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root: dldr

import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from dldr.integrations.transformers_callback import DLDRTrainerCallback


class Tokens(torch.utils.data.Dataset):
    """Random token sequences; the label is whether token 1 occurs more often than token 2."""

    def __init__(self, size=128, length=12, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(3, 20, (size, length), generator=g)
        self.ids[:, ::3] = torch.randint(1, 3, (size, (length + 2) // 3), generator=g)
        self.labels = ((self.ids == 1).sum(1) > (self.ids == 2).sum(1)).long()

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {'input_ids': self.ids[i], 'labels': self.labels[i]}


def main(switch_step=16, steps=40, d=6, output_dir=None, extra_callbacks=()):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    model = BertForSequenceClassification(config)
    dldr_callback = DLDRTrainerCallback(n_components=d, switch_step=switch_step, record_every=2,
                                        lr=0.05, momentum=0.9)
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=output_dir or tmp, max_steps=steps,
                                 per_device_train_batch_size=32, learning_rate=1e-3, logging_steps=1,
                                 report_to=[], save_strategy='no', use_cpu=True, disable_tqdm=True,
                                 seed=0, dataloader_num_workers=0)
        trainer = Trainer(model=model, args=args, train_dataset=Tokens(),
                          callbacks=[dldr_callback, *extra_callbacks])
        trainer.train()
    losses = [entry['loss'] for entry in trainer.state.log_history if 'loss' in entry]
    print(f'AdamW loss {losses[0]:.3f} -> {losses[switch_step - 1]:.3f}; '
          f'P-SGD in {d} dimensions -> {losses[-1]:.3f}')
    return dldr_callback, losses


if __name__ == '__main__':
    main()
