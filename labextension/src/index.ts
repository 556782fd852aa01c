/**
 * Plugins: the "GPU memory" sidebar and its status-bar item, both fed by one `MetricsModel`.
 */

import { ILayoutRestorer, JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, ICommandPalette, showDialog } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';
import { IDisposable } from '@lumino/disposable';

import { requestCleanup } from './api';
import { kernelLabel } from './format';
import type { ICleanupReply, IKernelMetrics } from './metrics';
import { MetricsModel, readOptions } from './model';
import { GpuMemoryPanel, IKernelActions } from './panel';
import { GpuMemoryStatus } from './statusbar';

const PLUGIN_ID = 'qwen3-jupyter:plugin';
const OPEN_COMMAND = 'qwen3-jupyter:open-gpu-memory';

const gpuIcon = new LabIcon({
  name: 'qwen3-jupyter:gpu',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<path d="M4 6h16a1 1 0 0 1 1 1v9a1 1 0 0 1-1 1H4a1 1 0 0 1-1-1V7a1 1 0 0 1 1-1zm1 2v7h14V8H5z"/>' +
    '<path d="M7 10h2v3H7zm4 0h2v3h-2zm4 0h2v3h-2zM6 18h2v2H6zm5 0h2v2h-2zm5 0h2v2h-2z"/>' +
    '</g></svg>'
});

function kernelActions(app: JupyterFrontEnd, model: MetricsModel): IKernelActions {
  /** Whether the server last saw `kernelId` run a cell (it tracks every client's cells). */
  const busy = (kernelId: string): boolean =>
    model.metrics?.kernels.find(k => k.kernel_id === kernelId)?.execution_state === 'busy';

  return {
    /**
     * Uses a connection of its own that handles no comms: `requestCleanup` sends its comm on
     * the main shell by hand, so the cleanup runs between cells (JupyterLab would send comm
     * messages over a subshell, beside a running cell), and no comm the kernel opens meanwhile
     * (a running cell's widgets) is closed for want of a target on this connection.
     */
    async freeMemory(kernel: IKernelMetrics): Promise<ICleanupReply> {
      const connection = app.serviceManager.kernels.connectTo({
        model: { id: kernel.kernel_id, name: kernel.name },
        handleComms: false
      });
      try {
        return await requestCleanup(connection, undefined, () => busy(kernel.kernel_id));
      } finally {
        connection.dispose();
      }
    },

    async confirmShutdown(kernel: IKernelMetrics): Promise<boolean> {
      const result = await showDialog({
        title: 'Shut down kernel?',
        body:
          `Shut down the kernel of ${kernelLabel(kernel)}? Its variables and the memory they ` +
          'hold are released; the notebook stays open and can start a new kernel.',
        buttons: [Dialog.cancelButton(), Dialog.warnButton({ label: 'Shut down' })]
      });
      return result.button.accept;
    },

    shutdown(kernel: IKernelMetrics): Promise<void> {
      return app.serviceManager.kernels.shutdown(kernel.kernel_id);
    },

    open(kernel: IKernelMetrics): void {
      if (kernel.notebook_path) {
        void app.commands.execute('docmanager:open', { path: kernel.notebook_path });
      }
    }
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'GPU memory sidebar: per-notebook VRAM and RSS, free or shut down a kernel.',
  autoStart: true,
  optional: [ISettingRegistry, IStatusBar, ILayoutRestorer, ICommandPalette],
  activate: async (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    statusBar: IStatusBar | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ): Promise<void> => {
    const model = new MetricsModel(app.serviceManager.serverSettings);
    const panel = new GpuMemoryPanel(model, kernelActions(app, model));
    panel.title.icon = gpuIcon;
    app.shell.add(panel, 'left', { rank: 250 });
    restorer?.add(panel, panel.id);

    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Show GPU Memory',
      caption: 'Open the GPU memory sidebar',
      execute: () => app.shell.activateById(panel.id)
    });
    palette?.addItem({ command: OPEN_COMMAND, category: 'Kernel' });

    let status: { item: GpuMemoryStatus; registration: IDisposable } | null = null;
    const applyStatusBar = (show: boolean): void => {
      if (!statusBar || show === (status !== null)) {
        return;
      }
      if (show) {
        const item = new GpuMemoryStatus(model, () => app.shell.activateById(panel.id));
        const registration = statusBar.registerStatusItem(`${PLUGIN_ID}:status`, {
          item,
          align: 'left',
          rank: 4
        });
        status = { item, registration };
      } else if (status) {
        status.registration.dispose();
        status.item.dispose();
        status = null;
      }
    };

    let settings: ISettingRegistry.ISettings | null = null;
    if (settingRegistry) {
      try {
        settings = await settingRegistry.load(PLUGIN_ID);
        settings.changed.connect(() => {
          const options = readOptions(settings);
          model.setOptions(options);
          applyStatusBar(options.showStatusBar);
        });
      } catch (reason) {
        console.warn('qwen3-jupyter: could not load settings; using defaults.', reason);
      }
    }
    const options = readOptions(settings);
    model.setOptions(options);
    applyStatusBar(options.showStatusBar);
    model.start();
  }
};

export default plugin;
